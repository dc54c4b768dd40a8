//! The OpenAPI document and the router agree: every served route is documented, and every
//! documented operation is served.

use std::collections::BTreeSet;

use http::Method;

use crate::support::{pattern_of, TestServer};

#[tokio::test]
async fn every_route_is_documented_and_every_documented_operation_is_served() {
    let server = TestServer::default().await;
    let doc = server.client.send("GET", "/openapi.json", None, None).await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc, triggers_http::openapi_document());

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object().unwrap().keys().map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> =
        triggers_http::routes().iter().map(|r| (r.method.to_owned(), r.path.to_owned())).collect();
    assert_eq!(documented, served);
    assert_eq!(served.len(), 29);

    // Every documented operation reaches a handler: never 404 route_not_found or 405.
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
            .replace("{file}", "index.html");
        let r = server.client.send(method, &concrete, None, None).await;
        assert_ne!(r.status, 405, "{method} {path}");
        if r.status == 404 {
            assert_eq!(r.json()["code"], "not_found", "{method} {path}: {}", r.text());
        }
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        assert_eq!(pattern_of(&m, &concrete), Some(path.as_str()));
    }

    // Every operation: an operationId, responses, and problem bodies for errors; routes with
    // ids declare the parameter; JSON bodies are required where taken.
    for (method, path) in &documented {
        let op = &doc["paths"][path][method.to_lowercase()];
        assert!(op["operationId"].is_string(), "{method} {path}");
        let responses = op["responses"].as_object().unwrap();
        assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path}");
        for (status, r) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &r["content"]["application/problem+json"]["schema"];
                assert_eq!(schema["allOf"][0]["$ref"], "#/components/schemas/Problem");
                let codes = schema["allOf"][1]["properties"]["code"]["enum"].as_array().unwrap();
                assert!(!codes.is_empty(), "{method} {path} {status}: the codes it may carry");
            }
        }
        if path.contains("{id}") {
            assert_eq!(op["parameters"][0]["name"], "id");
        }
    }
    // Every $ref resolves.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/components/").skip(1) {
        let reference = &part[..part.find('"').unwrap()];
        let (kind, name) = reference.split_once('/').unwrap();
        assert!(doc["components"][kind].get(name).is_some(), "dangling $ref {reference}");
    }
}
