// Starts Swagger UI on this server's own OpenAPI document. Kept out of the HTML so the page
// runs under a Content-Security-Policy without inline scripts.
// The API key typed into "Authorize" stays in this page's memory (no persistence).
/* global SwaggerUIBundle */
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: false,
  // No request may leave this origin: no online validator badge.
  validatorUrl: null,
  persistAuthorization: false,
  tryItOutEnabled: false,
  displayRequestDuration: true,
  defaultModelsExpandDepth: 0,
});
