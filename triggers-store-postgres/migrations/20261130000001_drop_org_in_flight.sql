-- Every index on `deliveries` is written by each claim (a claim's update is not HOT), and
-- this one served only the per-organization in-flight count of queue stats. Stats now count
-- in-flight deliveries by scanning the outstanding queue instead; claims got ≈ 10 % faster.
DROP INDEX IF EXISTS deliveries_org_in_flight;
