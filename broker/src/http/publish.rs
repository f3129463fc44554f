//! `POST /pub?clientid=<id>&topic=<topic>&qos=<0|1|2>&retain=<true|false>`: Coolpy7's HTTP
//! publish. The body is the payload; the credentials are an `Authorization: Basic` header
//! (`user:password` as for MQTT, or `Basic <jwt>` alone, as Coolpy7 took it with `-as=1`). The
//! message goes through the [`gateway`](crate::gateway): 200 when published, 400 for bad
//! parameters, 401 for refused credentials, 403 when the rules deny the topic, 413 for a
//! payload over `-mpl`, 503 when the HTTP authentication service could not be asked; errors
//! carry a short JSON body.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{json, HttpState};
use crate::codec::QoS;
use crate::gateway::{self, GatewayPublish, GatewayRefusal};
use crate::metrics::AuthFailureKind;

#[derive(Deserialize)]
pub(super) struct PublishQuery {
    clientid: Option<String>,
    topic: Option<String>,
    qos: Option<String>,
    retain: Option<String>,
}

fn bad_request(error: &str) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": error }),
    )
}

/// The user and password of a Basic header; a value without `:` is a token alone (Coolpy7's
/// `Basic <jwt>`, unencoded, is taken too).
fn basic_credentials(headers: &HeaderMap) -> Option<(Option<String>, Vec<u8>)> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let rest = rest.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    match decoded {
        Some(text) => match text.split_once(':') {
            Some((user, password)) => Some((Some(user.to_string()), password.as_bytes().to_vec())),
            None => Some((None, text.into_bytes())),
        },
        // Not base64: a JWT as it is (its dots are not in the base64 alphabet).
        None => Some((None, rest.as_bytes().to_vec())),
    }
}

fn parse_flag(value: Option<&str>) -> Option<bool> {
    match value {
        None | Some("" | "false" | "0") => Some(false),
        Some("true" | "1") => Some(true),
        Some(_) => None,
    }
}

pub(super) async fn publish(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<PublishQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let broker = &state.broker;
    // axum's own rejection is plain text; every error here is JSON.
    let Ok(Query(query)) = query else {
        return bad_request("the query string is not clientid, topic, qos and retain, once each");
    };
    let Some(topic) = query.topic.filter(|topic| !topic.is_empty()) else {
        return bad_request("the topic parameter is required");
    };
    let qos = match query.qos.as_deref() {
        None | Some("") => QoS::AtMostOnce,
        Some(text) => match text.parse::<u8>().ok().and_then(QoS::from_u8) {
            Some(qos) => qos,
            None => return bad_request("qos must be 0, 1 or 2"),
        },
    };
    let Some(retain) = parse_flag(query.retain.as_deref()) else {
        return bad_request("retain must be true or false");
    };
    let client_id = query.clientid.unwrap_or_default();
    // Read up to the largest PUBLISH; one byte more says it is too large.
    let limit = broker.config.max_packet_size;
    let too_large = || {
        json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({ "error": "the payload is larger than -mpl allows" }),
        )
    };
    let payload = match axum::body::to_bytes(body, limit.saturating_add(1)).await {
        Ok(payload) if payload.len() <= limit => payload,
        Ok(_) => return too_large(),
        Err(error) => {
            let error = error.into_inner();
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return too_large();
            }
            return bad_request("the body could not be read");
        }
    };
    let credentials = basic_credentials(&headers);
    let (username, password) = match &credentials {
        Some((username, password)) => (username.as_deref(), Some(password.as_slice())),
        None => (None, None),
    };
    let request = GatewayPublish {
        client_id: &client_id,
        username,
        password,
        peer,
        via: "http",
        topic: &topic,
        qos,
        retain,
        payload,
    };
    match gateway::publish(broker, request).await {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({ "published": true })),
        Err(GatewayRefusal::InvalidTopic) => bad_request("the topic is not a valid topic name"),
        Err(GatewayRefusal::TooLarge) => json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({ "error": "the message is larger than -mpl allows" }),
        ),
        // The client could not be judged (the HTTP service did not answer): worth retrying.
        Err(GatewayRefusal::Unauthenticated(failure))
            if failure.kind == AuthFailureKind::Unavailable =>
        {
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "error": "authentication is unavailable; try again" }),
            )
        }
        Err(GatewayRefusal::Unauthenticated(_)) => {
            let mut response = json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({ "error": "authentication failed" }),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"coolpy7\""),
            );
            response
        }
        Err(GatewayRefusal::Forbidden) => json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({ "error": "not authorized to publish to this topic" }),
        ),
    }
    .into_response()
}
