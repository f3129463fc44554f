//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one operator replica
//! reconciles and a second one waits.
//!
//! [`decide`] is the rule (pure, tested here); [`LeaderElector`] does the I/O: it reads the
//! Lease, and writes it with the resourceVersion it read, so that two candidates racing for an
//! expired lease cannot both win (the API server refuses the second write with 409).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;

/// How long a lease lasts without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews it (and a candidate looks again); also the longest one attempt
/// may take.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// A holder that has not renewed for this long stops, well before a candidate may take over
/// (client-go's renew deadline).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// What to do with the lease as it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it: create it.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Its holder stopped renewing: take it over.
    TakeOver,
    /// Someone else holds it: wait.
    Wait,
}

/// The rule, from the lease as read (`None` when it does not exist).
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() == Some(me) {
        return Decision::Renew;
    }
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return Decision::TakeOver;
    }
    let duration = spec
        .lease_duration_seconds
        .map_or(LEASE_DURATION.as_secs() as i64, i64::from);
    let expired = match spec.renew_time.or(spec.acquire_time) {
        Some(MicroTime(renewed)) => now.as_second() - renewed.as_second() > duration,
        None => true,
    };
    if expired {
        Decision::TakeOver
    } else {
        Decision::Wait
    }
}

/// Builds the lease as `me` holds it, keeping what the API server needs to accept the write.
pub fn held_by(
    previous: Option<&Lease>,
    name: &str,
    namespace: &str,
    me: &str,
    now: Timestamp,
) -> Lease {
    let previous_spec = previous.and_then(|l| l.spec.clone()).unwrap_or_default();
    let ours = previous_spec.holder_identity.as_deref() == Some(me);
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            resource_version: previous.and_then(|l| l.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(me.into()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: if ours {
                previous_spec.acquire_time
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(
                previous_spec.lease_transitions.unwrap_or(0)
                    + i32::from(!ours && previous.is_some()),
            ),
            ..LeaseSpec::default()
        }),
    }
}

/// Holds or waits for the lease `name` in `namespace` as `me`.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    namespace: String,
    me: String,
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, name: &str, me: &str) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            namespace: namespace.into(),
            me: me.into(),
        }
    }

    /// One round: whether we hold the lease afterwards.
    pub async fn try_hold(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Timestamp::now();
        let lease = held_by(current.as_ref(), &self.name, &self.namespace, &self.me, now);
        let written = match decide(current.as_ref(), &self.me, now) {
            Decision::Wait => return Ok(false),
            Decision::Create => self.api.create(&PostParams::default(), &lease).await,
            Decision::Renew | Decision::TakeOver => {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            // Another candidate wrote first.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_secs_ago: i64, now: Timestamp) -> Lease {
        let renewed = Timestamp::from_second(now.as_second() - renewed_secs_ago).unwrap();
        Lease {
            metadata: ObjectMeta {
                name: Some("coolpy7-operator".into()),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed)),
                acquire_time: Some(MicroTime(renewed)),
                lease_transitions: Some(2),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn the_rule() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "a", now), Decision::Create);
        assert_eq!(
            decide(Some(&lease(Some("a"), 3, now)), "a", now),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), 3, now)), "a", now),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), 16, now)), "a", now),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&lease(None, 3, now)), "a", now),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&lease(Some(""), 3, now)), "a", now),
            Decision::TakeOver
        );
    }

    /// try_hold against a mocked API server: one scripted answer per request.
    async fn try_hold_with(
        answers: Vec<(http::Method, &'static str, u16, serde_json::Value)>,
    ) -> bool {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let elector =
            LeaderElector::new(Client::new(service, "ops"), "ops", "coolpy7-operator", "a");
        let server = tokio::spawn(async move {
            for (method, path, code, body) in answers {
                let (request, respond) = handle.next_request().await.expect("a request");
                assert_eq!(request.method(), method, "{}", request.uri());
                assert!(
                    request.uri().to_string().starts_with(path),
                    "{}",
                    request.uri()
                );
                if method == http::Method::PUT {
                    let sent = request.into_body().collect_bytes().await.expect("body");
                    let sent: serde_json::Value = serde_json::from_slice(&sent).expect("JSON");
                    assert_eq!(
                        sent["metadata"]["resourceVersion"], "42",
                        "written with the version read"
                    );
                    assert_eq!(sent["spec"]["holderIdentity"], "a");
                }
                let response = Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
                    .expect("response");
                respond.send_response(response);
            }
        });
        let held = tokio::time::timeout(Duration::from_secs(5), elector.try_hold())
            .await
            .expect("in time")
            .expect("no API error");
        server.await.expect("every scripted request came");
        held
    }

    fn status(code: u16, reason: &str) -> serde_json::Value {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": reason, "code": code, "message": reason})
    }

    #[tokio::test]
    async fn holding_the_lease_through_the_api() {
        use http::Method;
        const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/coolpy7-operator";
        const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases?";
        let now = Timestamp::now();
        let as_json = |lease: Lease| serde_json::to_value(lease).expect("JSON");
        // Nobody holds it: created.
        let created = as_json(held_by(None, "coolpy7-operator", "ops", "a", now));
        assert!(
            try_hold_with(vec![
                (Method::GET, LEASE, 404, status(404, "NotFound")),
                (Method::POST, LEASES, 201, created),
            ])
            .await
        );
        // Someone else renews it: wait, write nothing.
        assert!(
            !try_hold_with(vec![(
                Method::GET,
                LEASE,
                200,
                as_json(lease(Some("b"), 2, now))
            )])
            .await
        );
        // Expired: taken over with the version read.
        let expired = lease(Some("b"), 60, now);
        let taken = as_json(held_by(Some(&expired), "coolpy7-operator", "ops", "a", now));
        assert!(
            try_hold_with(vec![
                (Method::GET, LEASE, 200, as_json(expired.clone())),
                (Method::PUT, LEASE, 200, taken),
            ])
            .await
        );
        // Another candidate wrote first: not ours.
        assert!(
            !try_hold_with(vec![
                (Method::GET, LEASE, 200, as_json(expired)),
                (Method::PUT, LEASE, 409, status(409, "Conflict")),
            ])
            .await
        );
    }

    #[test]
    fn a_taken_over_lease_counts_the_transition_and_keeps_the_version() {
        let now = Timestamp::now();
        let previous = lease(Some("b"), 30, now);
        let taken = held_by(Some(&previous), "coolpy7-operator", "ops", "a", now);
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("42"));
        let spec = taken.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        let renewed = held_by(
            Some(&lease(Some("a"), 3, now)),
            "coolpy7-operator",
            "ops",
            "a",
            now,
        );
        let spec = renewed.spec.unwrap();
        assert_eq!(
            spec.lease_transitions,
            Some(2),
            "a renewal is no transition"
        );
        assert_ne!(spec.acquire_time, Some(MicroTime(now)), "acquired earlier");
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
    }
}
