//! The admin API's transforms: deploy, list, describe, pause, resume, delete, logs
//! (`fjordctl transform …` calls these).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use fjord_transforms::spec::{self, DeployRequest, State as RunState};

use super::error;
use crate::server::Broker;
use crate::transforms::{status_of, Refusal};

type B = State<Arc<Broker>>;

/// Most bytes of a deploy request: the largest module, base64, and its spec.
const MAX_DEPLOY_BYTES: usize = spec::MAX_MODULE_BYTES / 3 * 4 + (1 << 20);

pub fn routes(router: Router<Arc<Broker>>) -> Router<Arc<Broker>> {
    router
        .route("/v1/transforms", get(list))
        .route(
            "/v1/transforms/{name}",
            put(deploy).get(describe).delete(delete).layer(DefaultBodyLimit::max(MAX_DEPLOY_BYTES)),
        )
        .route("/v1/transforms/{name}/pause", post(pause))
        .route("/v1/transforms/{name}/resume", post(resume))
        .route("/v1/transforms/{name}/logs", get(logs))
}

fn starting() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "transforms are starting")
}

fn refused(r: Refusal) -> Response {
    let (status, message) = status_of(&r);
    error(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), message.to_string())
}

async fn deploy(State(b): B, Path(name): Path<String>, body: axum::body::Bytes) -> Response {
    let Some(t) = b.transforms.get().cloned() else { return starting() };
    let req: DeployRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad deploy request: {e}")),
    };
    match t.deploy(&name, req).await {
        Ok(view) => Json(view).into_response(),
        Err(r) => refused(r),
    }
}

async fn list(State(b): B) -> Response {
    let Some(t) = b.transforms.get().cloned() else { return starting() };
    let mut out = Vec::new();
    for s in t.list() {
        out.push(t.view(&s).await);
    }
    Json(out).into_response()
}

async fn describe(State(b): B, Path(name): Path<String>) -> Response {
    let Some(t) = b.transforms.get().cloned() else { return starting() };
    match t.get(&name) {
        Some(s) => Json(t.view(&s).await).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no transform named {name}")),
    }
}

async fn set_state(b: &Broker, name: &str, state: RunState) -> Response {
    let Some(t) = b.transforms.get().cloned() else { return starting() };
    match t.set_state(name, state).await {
        Ok(view) => Json(view).into_response(),
        Err(r) => refused(r),
    }
}

async fn pause(State(b): B, Path(name): Path<String>) -> Response {
    set_state(&b, &name, RunState::Paused).await
}

async fn resume(State(b): B, Path(name): Path<String>) -> Response {
    set_state(&b, &name, RunState::Running).await
}

async fn delete(State(b): B, Path(name): Path<String>) -> Response {
    let Some(t) = b.transforms.get().cloned() else { return starting() };
    match t.delete(&name).await {
        Ok(()) => Json(serde_json::json!({ "deleted": name })).into_response(),
        Err(r) => refused(r),
    }
}

async fn logs(State(b): B, Path(name): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(t) = b.transforms.get().cloned() else { return starting() };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=10_000).contains(&n) => n,
        Some(_) => return error(StatusCode::BAD_REQUEST, "limit is a number from 1 to 10000"),
    };
    if t.get(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no transform named {name}"));
    }
    match t.logs(&name, limit).await {
        Ok(lines) => Json(lines).into_response(),
        Err(r) => refused(r),
    }
}
