//! The registry over real HTTP: each test starts the server in-process on 127.0.0.1:0 and
//! talks to it with reqwest.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use reflex_registry::{serve, Store};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const CT: &str = "application/vnd.schemaregistry.v1+json";

struct Server {
    url: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    async fn start(store: Store) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, store, async {
            let _ = rx.await;
        }));
        Server {
            url: format!("http://{addr}"),
            http: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn memory() -> Server {
        Server::start(Store::in_memory()).await
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }

    /// (HTTP status, JSON body)
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("Accept", CT);
        if let Some(body) = body {
            request = request.header("Content-Type", CT).body(body.to_string());
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: answer is not JSON ({e}): {text}"));
        (status, value)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Registers `schema` under `subject` and returns the id; panics unless 200.
    async fn register(&self, subject: &str, schema: &str) -> u64 {
        let (status, body) = self.try_register(subject, schema).await;
        assert_eq!(status, 200, "register {subject}: {body}");
        body["id"].as_u64().expect("id")
    }

    async fn try_register(&self, subject: &str, schema: &str) -> (u16, Value) {
        self.post(
            &format!("/subjects/{subject}/versions"),
            json!({ "schema": schema }),
        )
        .await
    }

    async fn set_level(&self, subject: &str, level: &str) {
        let (status, body) = self
            .put(
                &format!("/config/{subject}"),
                json!({ "compatibility": level }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({ "compatibility": level }));
    }
}

fn assert_error(actual: (u16, Value), status: u16, code: u64) {
    assert_eq!(actual.0, status, "{}", actual.1);
    assert_eq!(actual.1["error_code"], json!(code), "{}", actual.1);
    assert!(actual.1["message"].is_string(), "{}", actual.1);
}

/// A record `r` with the given fields (JSON text of the field list).
fn record(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"r","namespace":"reflex.test","fields":[{fields}]}}"#)
}

const A_INT: &str = r#"{"name":"a","type":"int"}"#;
const B_STRING: &str = r#"{"name":"b","type":"string"}"#;
const B_STRING_DEFAULT: &str = r#"{"name":"b","type":"string","default":"none"}"#;

fn v1() -> String {
    record(A_INT)
}

/// A fresh directory under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "reflex-registry-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn open(path: &Path) -> Store {
    Store::open(path).expect("open data file")
}

#[tokio::test]
async fn register_then_get_by_id_and_reregister_returns_same_id() {
    let s = Server::memory().await;
    let id = s.register("orders-value", &v1()).await;
    assert_eq!(id, 1, "ids start at 1");

    let (status, body) = s.get(&format!("/schemas/ids/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "schema": v1() }), "no schemaType for AVRO");
    // Query parameters Confluent clients add are ignored.
    let (status, again) = s
        .get(&format!("/schemas/ids/{id}?subject=orders-value&format=x"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["schema"], body["schema"]);
    let (_, with_max) = s.get(&format!("/schemas/ids/{id}?fetchMaxId=true")).await;
    assert_eq!(with_max["maxId"], json!(1));

    // Same schema, other spelling (whitespace, key order, full name): same id, no new version.
    let respelled = r#"{ "fields": [ {"type": "int", "name": "a"} ], "name": "reflex.test.r", "type": "record" }"#;
    assert_eq!(s.register("orders-value", &v1()).await, id);
    assert_eq!(s.register("orders-value", respelled).await, id);
    assert_eq!(s.get("/subjects/orders-value/versions").await.1, json!([1]));

    // schemaType AVRO, empty references and ?normalize=False are accepted.
    let (status, body) = s
        .post(
            "/subjects/orders-value/versions?normalize=False",
            json!({ "schema": v1(), "schemaType": "AVRO", "references": [] }),
        )
        .await;
    assert_eq!((status, body), (200, json!({ "id": id })));
    s.stop().await;
}

#[tokio::test]
async fn same_schema_under_two_subjects_shares_the_id() {
    let s = Server::memory().await;
    let a = s.register("a-value", &v1()).await;
    let b = s.register("b-value", &v1()).await;
    assert_eq!(a, b);
    let other = s.register("c-value", &record(B_STRING)).await;
    assert_ne!(other, a);
    let (status, body) = s.get(&format!("/schemas/ids/{a}/versions")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!([{"subject": "a-value", "version": 1}, {"subject": "b-value", "version": 1}])
    );
    assert_eq!(
        s.get(&format!("/schemas/ids/{a}/subjects")).await.1,
        json!(["a-value", "b-value"])
    );
    assert_eq!(
        s.get("/subjects").await.1,
        json!(["a-value", "b-value", "c-value"])
    );
    // Pagination as the Python client sends it.
    assert_eq!(
        s.get("/subjects?deleted=false&deleted_only=false&offset=0&limit=-1")
            .await
            .1,
        json!(["a-value", "b-value", "c-value"])
    );
    assert_eq!(
        s.get("/subjects?offset=1&limit=1").await.1,
        json!(["b-value"])
    );
    s.stop().await;
}

#[tokio::test]
async fn versions_list_and_latest() {
    let s = Server::memory().await;
    let v2 = record(&format!("{A_INT},{B_STRING_DEFAULT}"));
    let id1 = s.register("t-value", &v1()).await;
    let id2 = s.register("t-value", &v2).await;
    assert_ne!(id1, id2);
    assert_eq!(s.get("/subjects/t-value/versions").await.1, json!([1, 2]));

    let expected_latest = json!({"subject": "t-value", "version": 2, "id": id2, "schema": v2});
    assert_eq!(
        s.get("/subjects/t-value/versions/latest").await,
        (200, expected_latest.clone())
    );
    assert_eq!(
        s.get("/subjects/t-value/versions/-1").await,
        (200, expected_latest)
    );
    assert_eq!(
        s.get("/subjects/t-value/versions/1").await,
        (
            200,
            json!({"subject": "t-value", "version": 1, "id": id1, "schema": v1()})
        )
    );
    // The raw schema endpoint answers the schema document itself.
    let (status, raw) = s.get("/subjects/t-value/versions/1/schema").await;
    assert_eq!(status, 200);
    assert_eq!(raw, serde_json::from_str::<Value>(&v1()).expect("json"));

    assert_error(s.get("/subjects/t-value/versions/3").await, 404, 40402);
    assert_error(s.get("/subjects/t-value/versions/0").await, 422, 42202);
    assert_error(s.get("/subjects/t-value/versions/abc").await, 422, 42202);
    s.stop().await;
}

#[tokio::test]
async fn lookup_finds_registered_schemas_only() {
    let s = Server::memory().await;
    let id = s.register("l-value", &v1()).await;
    let (status, body) = s
        .post(
            "/subjects/l-value?normalize=False&deleted=False",
            json!({ "schema": v1() }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"subject": "l-value", "version": 1, "id": id, "schema": v1()})
    );
    assert_error(
        s.post("/subjects/l-value", json!({ "schema": record(B_STRING) }))
            .await,
        404,
        40403,
    );
    assert_error(
        s.post("/subjects/nope", json!({ "schema": v1() })).await,
        404,
        40401,
    );
    s.stop().await;
}

#[tokio::test]
async fn backward_rejects_a_new_field_without_default_and_accepts_one_with_default() {
    let s = Server::memory().await;
    assert_eq!(
        s.get("/config").await,
        (200, json!({ "compatibilityLevel": "BACKWARD" }))
    );
    s.register("bw-value", &v1()).await;

    let no_default = record(&format!("{A_INT},{B_STRING}"));
    let (status, body) = s.try_register("bw-value", &no_default).await;
    assert_error((status, body.clone()), 409, 409);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("incompatible") && message.contains("READER_FIELD_MISSING_DEFAULT_VALUE"),
        "{message}"
    );
    assert_eq!(s.get("/subjects/bw-value/versions").await.1, json!([1]));

    // The compatibility endpoint agrees, and explains itself when asked.
    let (status, body) = s
        .post(
            "/compatibility/subjects/bw-value/versions/latest?verbose=true",
            json!({ "schema": no_default }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["is_compatible"], json!(false));
    let messages = body["messages"].as_array().expect("messages");
    assert!(messages
        .iter()
        .any(|m| m.as_str() == Some("{oldSchemaVersion: 1}")));
    assert_eq!(
        s.post(
            "/compatibility/subjects/bw-value/versions/latest",
            json!({ "schema": no_default })
        )
        .await,
        (200, json!({ "is_compatible": false }))
    );

    let with_default = record(&format!("{A_INT},{B_STRING_DEFAULT}"));
    assert_eq!(
        s.post(
            "/compatibility/subjects/bw-value/versions/1?verbose=true",
            json!({ "schema": with_default })
        )
        .await,
        (200, json!({ "is_compatible": true, "messages": [] }))
    );
    s.register("bw-value", &with_default).await;
    assert_eq!(s.get("/subjects/bw-value/versions").await.1, json!([1, 2]));

    // A subject without versions accepts anything.
    assert_eq!(
        s.post(
            "/compatibility/subjects/empty-value/versions/latest",
            json!({ "schema": no_default })
        )
        .await,
        (200, json!({ "is_compatible": true }))
    );
    s.stop().await;
}

#[tokio::test]
async fn forward_full_and_none_per_subject_behave_differently() {
    let s = Server::memory().await;
    let add_no_default = record(&format!("{A_INT},{B_STRING}"));
    let add_default = record(&format!("{A_INT},{B_STRING_DEFAULT}"));
    let a_as_string = record(r#"{"name":"a","type":"string"}"#);

    for subject in ["fw", "full", "none", "default"] {
        s.register(subject, &v1()).await;
    }
    s.set_level("fw", "FORWARD").await;
    s.set_level("full", "FULL").await;
    s.set_level("none", "NONE").await;
    assert_eq!(
        s.get("/config/full").await,
        (200, json!({ "compatibilityLevel": "FULL" }))
    );
    assert_error(s.get("/config/default").await, 404, 40408);
    assert_eq!(
        s.get("/config/default?defaultToGlobal=true").await,
        (200, json!({ "compatibilityLevel": "BACKWARD" }))
    );

    // Adding a field without a default: old readers ignore it (FORWARD ok), new readers
    // cannot fill it from old data (BACKWARD, FULL fail).
    assert_eq!(s.try_register("fw", &add_no_default).await.0, 200);
    assert_error(s.try_register("full", &add_no_default).await, 409, 409);
    assert_error(s.try_register("default", &add_no_default).await, 409, 409);
    assert_eq!(s.try_register("none", &add_no_default).await.0, 200);
    // With a default, FULL accepts it.
    assert_eq!(s.try_register("full", &add_default).await.0, 200);
    // Dropping field `a` (no default): the previous schema cannot read the new data, so
    // FORWARD and FULL reject it, BACKWARD (the new reader ignores `a`) accepts it.
    let only_b = record(B_STRING_DEFAULT);
    assert_error(s.try_register("fw", &only_b).await, 409, 409);
    assert_error(s.try_register("full", &only_b).await, 409, 409);
    assert_eq!(s.try_register("default", &only_b).await.0, 200);
    // NONE accepts anything, even a type change that BACKWARD rejects.
    assert_eq!(s.try_register("none", &a_as_string).await.0, 200);
    s.register("bw", &v1()).await;
    assert_error(s.try_register("bw", &a_as_string).await, 409, 409);

    // Deleting the subject-level config falls back to the global level.
    assert_eq!(
        s.delete("/config/fw").await,
        (200, json!({ "compatibilityLevel": "FORWARD" }))
    );
    assert_error(s.get("/config/fw").await, 404, 40408);
    s.stop().await;
}

#[tokio::test]
async fn transitive_levels_check_every_version_and_the_others_only_the_latest() {
    // v1 {a, b: string}; v2 {a} (drops b); v3 {a, b: int = 0}. v3 reads v2 data (b from the
    // default) but not v1 data (b is a string there).
    let v1 = record(&format!("{A_INT},{B_STRING}"));
    let v2 = record(A_INT);
    let v3 = record(&format!(
        r#"{A_INT},{{"name":"b","type":"int","default":0}}"#
    ));

    let s = Server::memory().await;
    for subject in ["plain", "transitive"] {
        s.register(subject, &v1).await;
        s.register(subject, &v2).await;
    }
    s.set_level("transitive", "BACKWARD_TRANSITIVE").await;

    // What a registration would check:
    assert_eq!(
        s.post(
            "/compatibility/subjects/transitive/versions",
            json!({ "schema": v3 })
        )
        .await,
        (200, json!({ "is_compatible": false }))
    );
    assert_eq!(
        s.post(
            "/compatibility/subjects/plain/versions",
            json!({ "schema": v3 })
        )
        .await,
        (200, json!({ "is_compatible": true }))
    );

    let (status, body) = s.try_register("transitive", &v3).await;
    assert_error((status, body.clone()), 409, 409);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("{oldSchemaVersion: 1}"),
        "{body}"
    );
    assert_eq!(s.try_register("plain", &v3).await.0, 200);
    assert_eq!(s.get("/subjects/plain/versions").await.1, json!([1, 2, 3]));
    assert_eq!(
        s.get("/subjects/transitive/versions").await.1,
        json!([1, 2])
    );
    s.stop().await;
}

#[tokio::test]
async fn invalid_and_unsupported_schemas_are_42201() {
    let s = Server::memory().await;
    for bad in [
        r#"{"type":"record","name":"r","fields":[{"name":"a","type":"nope"}]}"#,
        r#"{"type":"record","fields":[]}"#,
        "not json",
        "",
    ] {
        let (status, body) = s.try_register("bad-value", bad).await;
        assert_error((status, body.clone()), 422, 42201);
    }
    let (_, body) = s
        .post(
            "/subjects/bad-value/versions",
            json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" }),
        )
        .await;
    assert_eq!(body["error_code"], json!(42201));
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("only AVRO"),
        "{body}"
    );
    let (_, body) = s
        .post(
            "/subjects/bad-value/versions",
            json!({ "schema": v1(), "references": [{"name": "x", "subject": "y", "version": 1}] }),
        )
        .await;
    assert_eq!(body["error_code"], json!(42201));
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("references are not supported"),
        "{body}"
    );
    // Nothing was registered.
    assert_error(s.get("/subjects/bad-value/versions").await, 404, 40401);

    // A body that is not JSON is a 400; JSON of the wrong shape is a 422.
    let response = s
        .http
        .post(format!("{}/subjects/x/versions", s.url))
        .body("{oops")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 400);
    assert_error(
        s.post("/subjects/x/versions", json!({ "schema": 5 })).await,
        422,
        422,
    );
    assert_error(
        s.put("/config", json!({ "compatibility": "SIDEWAYS" }))
            .await,
        422,
        42203,
    );
    s.stop().await;
}

#[tokio::test]
async fn unknown_ids_subjects_and_endpoints_are_404() {
    let s = Server::memory().await;
    assert_error(s.get("/schemas/ids/42").await, 404, 40403);
    assert_error(s.get("/schemas/ids/42/versions").await, 404, 40403);
    assert_error(s.get("/subjects/ghost/versions").await, 404, 40401);
    assert_error(s.get("/subjects/ghost/versions/latest").await, 404, 40401);
    assert_error(s.get("/subjects/ghost/versions/1").await, 404, 40401);
    assert_error(s.get("/no/such/endpoint").await, 404, 404);
    assert_error(
        s.call(reqwest::Method::PATCH, "/subjects", None).await,
        405,
        405,
    );
    assert_eq!(s.get("/").await, (200, json!({})));
    assert_eq!(s.get("/subjects").await, (200, json!([])));
    s.stop().await;
}

#[tokio::test]
async fn bodies_are_accepted_whatever_the_content_type() {
    let s = Server::memory().await;
    for (i, content_type) in [CT, "application/json", "application/octet-stream"]
        .into_iter()
        .enumerate()
    {
        let response = s
            .http
            .post(format!("{}/subjects/ct-{i}/versions", s.url))
            .header("Content-Type", content_type)
            .body(json!({ "schema": v1() }).to_string())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 200, "{content_type}");
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some(CT)
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body, json!({ "id": 1 }), "{content_type}");
    }
    s.stop().await;
}

#[tokio::test]
async fn schemas_that_differ_only_in_defaults_or_docs_are_different_versions() {
    let s = Server::memory().await;
    let a_default = record(r#"{"name":"a","type":"int","default":7}"#);
    let id1 = s.register("d-value", &v1()).await;
    let id2 = s.register("d-value", &a_default).await;
    assert_ne!(id1, id2);
    assert_eq!(s.get("/subjects/d-value/versions").await.1, json!([1, 2]));
    s.stop().await;
}

#[tokio::test]
async fn moving_a_named_type_definition_between_fields_is_compatible() {
    let s = Server::memory().await;
    s.set_level("m-value", "FULL_TRANSITIVE").await;
    let old = record(
        r#"{"name":"x","type":{"type":"enum","name":"E","symbols":["A","B"]}},{"name":"y","type":"E"}"#,
    );
    let new = record(
        r#"{"name":"y","type":{"type":"enum","name":"E","symbols":["A","B"]}},{"name":"x","type":"E"}"#,
    );
    s.register("m-value", &old).await;
    let (status, body) = s.try_register("m-value", &new).await;
    assert_eq!(status, 200, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn soft_and_permanent_deletes() {
    let s = Server::memory().await;
    let v2 = record(&format!("{A_INT},{B_STRING_DEFAULT}"));
    let id1 = s.register("del-value", &v1()).await;
    s.register("del-value", &v2).await;

    assert_eq!(
        s.delete("/subjects/del-value/versions/2").await,
        (200, json!(2))
    );
    assert_eq!(s.get("/subjects/del-value/versions").await.1, json!([1]));
    assert_eq!(
        s.get("/subjects/del-value/versions?deleted=true").await.1,
        json!([1, 2])
    );
    assert_error(
        s.delete("/subjects/del-value/versions/1?permanent=true")
            .await,
        404,
        40407,
    );
    assert_eq!(s.delete("/subjects/del-value").await, (200, json!([1])));
    assert_error(s.get("/subjects/del-value/versions").await, 404, 40401);
    assert_eq!(s.get("/subjects").await.1, json!([]));
    assert_eq!(
        s.get("/subjects?deleted=true").await.1,
        json!(["del-value"])
    );
    // Ids stay readable after a soft delete.
    assert_eq!(s.get(&format!("/schemas/ids/{id1}")).await.0, 200);
    assert_error(s.delete("/subjects/del-value").await, 404, 40404);

    // Registering again continues the version numbers and reuses the id.
    assert_eq!(s.register("del-value", &v1()).await, id1);
    assert_eq!(s.get("/subjects/del-value/versions").await.1, json!([3]));
    assert_error(
        s.delete("/subjects/del-value?permanent=true").await,
        404,
        40405,
    );
    s.delete("/subjects/del-value").await;
    assert_eq!(
        s.delete("/subjects/del-value?permanent=true").await,
        (200, json!([1, 2, 3]))
    );
    assert_error(s.get(&format!("/schemas/ids/{id1}")).await, 404, 40403);
    assert_error(s.delete("/subjects/del-value").await, 404, 40401);
    s.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart_from_the_data_file() {
    let dir = temp_dir("persist");
    let file = dir.join("registry.json");
    let v2 = record(&format!("{A_INT},{B_STRING_DEFAULT}"));

    let s = Server::start(open(&file)).await;
    let id1 = s.register("p-value", &v1()).await;
    let id2 = s.register("p-value", &v2).await;
    let id_other = s.register("q-value", &v1()).await;
    assert_eq!((id1, id2, id_other), (1, 2, 1));
    s.set_level("q-value", "FULL").await;
    s.put("/config", json!({ "compatibility": "FORWARD" }))
        .await;
    s.stop().await;
    assert!(file.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "registry.json")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let s = Server::start(open(&file)).await;
    assert_eq!(
        s.get("/schemas/ids/1").await,
        (200, json!({ "schema": v1() }))
    );
    assert_eq!(
        s.get("/schemas/ids/2").await,
        (200, json!({ "schema": v2 }))
    );
    assert_eq!(s.get("/subjects/p-value/versions").await.1, json!([1, 2]));
    assert_eq!(
        s.get("/subjects/p-value/versions/latest").await.1["id"],
        json!(2)
    );
    assert_eq!(s.get("/subjects").await.1, json!(["p-value", "q-value"]));
    assert_eq!(
        s.get("/config/q-value").await.1,
        json!({ "compatibilityLevel": "FULL" })
    );
    assert_eq!(
        s.get("/config").await.1,
        json!({ "compatibilityLevel": "FORWARD" })
    );
    // Known schemas keep their ids; a new one takes the next id.
    assert_eq!(s.register("p-value", &v1()).await, 1);
    let v3 = record(&format!(
        r#"{A_INT},{B_STRING_DEFAULT},{{"name":"c","type":"long","default":0}}"#
    ));
    assert_eq!(s.register("p-value", &v3).await, 3);
    s.stop().await;

    let s = Server::start(open(&file)).await;
    assert_eq!(
        s.get("/subjects/p-value/versions").await.1,
        json!([1, 2, 3])
    );
    assert_eq!(s.register("r-value", &record(B_STRING)).await, 4);
    s.stop().await;

    // A data file that is not registry state is refused, not overwritten.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{ nope").expect("write");
    assert!(Store::open(&bad).is_err());
    assert_eq!(std::fs::read_to_string(&bad).expect("read"), "{ nope");
    let _ = std::fs::remove_dir_all(&dir);
}
