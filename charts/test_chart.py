#!/usr/bin/env python3
"""Checks charts/coolpy7 offline: lints it strictly and renders it with the Helm engine
(PyPI helm-python-sdk), validates every rendered object strictly against the Kubernetes
schemas (PyPI kubernetes-validate) and the Coolpy7Cluster against the chart's own CRD, and
checks the fields that matter for several sets of values. Run by `cargo test` through
operator/tests/chart.rs; exits non-zero on the first failure, saying which."""

import base64
import json
import pathlib
import sys

import helm_python
import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "coolpy7"
KUBERNETES_VERSION = "1.33.0"
RELEASE, NAMESPACE = "coolpy7", "mqtt"


class StrictLoader(yaml.SafeLoader):
    """Refuses a mapping with a repeated key, which Helm's parser forgives but yaml.v3,
    kubeconform and GitOps tools reject."""


def _no_duplicates(loader, node, deep=False):
    keys = [loader.construct_object(key, deep=deep) for key, _ in node.value]
    repeated = {k for k in keys if keys.count(k) > 1}
    assert not repeated, f"repeated keys {repeated} at {node.start_mark}"
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def render(values, name=RELEASE):
    """The rendered objects by (kind, name), and the NOTES text."""
    chart = helm_python.Chart.load(str(CHART))
    files = chart.render(values, name=name, namespace=NAMESPACE, is_install=True)
    objects, notes = {}, ""
    for path, text in files.items():
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.load_all(text, Loader=StrictLoader):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in objects, f"{key} rendered twice"
                objects[key] = doc
    return objects, notes


def crd_schema():
    crd = yaml.safe_load((CHART / "crds" / "coolpy7clusters.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# The part of cert-manager's Certificate (cert-manager.io/v1) the chart writes, strictly:
# kubernetes-validate knows only Kubernetes' own kinds.
CERTIFICATE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["secretName", "issuerRef"],
            "properties": {
                "secretName": {"type": "string", "minLength": 1},
                "dnsNames": {"type": "array", "minItems": 1,
                             "items": {"type": "string", "minLength": 1}},
                "duration": {"type": "string", "pattern": "^[0-9]+(h|m|s)"},
                "renewBefore": {"type": "string", "pattern": "^[0-9]+(h|m|s)"},
                "privateKey": {"type": "object", "additionalProperties": False,
                               "properties": {"rotationPolicy": {"enum": ["Never", "Always"]}}},
                "issuerRef": {"type": "object", "additionalProperties": False,
                              "required": ["name"],
                              "properties": {"name": {"type": "string", "minLength": 1},
                                             "kind": {"type": "string", "minLength": 1},
                                             "group": {"type": "string", "minLength": 1}}},
            },
        },
    },
}


def validate(objects):
    schema = crd_schema()
    for (kind, name), doc in objects.items():
        if kind == "Coolpy7Cluster":
            # The CRD's structural schema, as the API server would apply it.
            jsonschema.validate(doc, schema)
        elif kind == "Certificate":
            jsonschema.validate(doc, CERTIFICATE_SCHEMA)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def only(objects, kind):
    found = [doc for (k, _), doc in objects.items() if k == kind]
    assert len(found) == 1, f"want one {kind}, got {len(found)}"
    return found[0]


def check_lint():
    result = helm_python.lint(str(CHART), strict=True)
    assert not result["errors"], result
    serious = [m for m in result["messages"] if m["severity"] >= 2]
    assert not serious, f"helm lint --strict: {serious}"


def check_defaults():
    objects, notes = render({})
    validate(objects)
    kinds = sorted(kind for kind, _ in objects)
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                            "RoleBinding", "Deployment", "Service", "Coolpy7Cluster"]), kinds
    cluster = only(objects, "Coolpy7Cluster")
    assert cluster["metadata"]["name"] == "coolpy7"
    assert cluster["metadata"]["namespace"] == NAMESPACE
    spec = cluster["spec"]
    assert spec["replicas"] == 3
    assert spec["image"] == {"repository": "ghcr.io/coolpy7/coolpy7", "tag": "0.1.0",
                             "pullPolicy": "IfNotPresent"}, spec["image"]
    assert spec["service"]["type"] == "LoadBalancer"
    assert "csk" not in spec, "the operator generates the key by default"
    assert spec["podDisruptionBudget"] == {"enabled": True, "maxUnavailable": 1}
    assert spec["ports"] == {"mqtt": 1883, "gossip": 7946, "sync": 7947, "http": 8081}
    assert "mqtt" not in spec, "the brokers keep their own MQTT 5 defaults"
    assert "forwarding" not in spec, "the brokers keep their own forwarding sizes"
    assert "drain" not in spec, "the brokers keep their own drain settings"
    assert "minReadySeconds" not in spec, "the operator's default"
    # In memory only, as the CRD's default says.
    assert spec["persistence"] == DEFAULT_PERSISTENCE, spec["persistence"]
    assert spec["persistence"] == crd_schema()["properties"]["spec"]["properties"][
        "persistence"]["default"], "the chart's defaults are the CRD's"
    # Plain MQTT only, as the CRD's defaults say; no TLS, no Certificate.
    assert spec["listeners"] == DEFAULT_LISTENERS, spec["listeners"]
    assert spec["listeners"] == crd_schema()["properties"]["spec"]["properties"]["listeners"][
        "default"], "the chart's defaults are the CRD's"
    assert "tls" not in spec, spec.get("tls")
    assert spec["proxyProtocol"] is False

    deployment = only(objects, "Deployment")
    pod = deployment["spec"]["template"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    for key, value in selector.items():
        assert pod["metadata"]["labels"].get(key) == value, (key, pod["metadata"]["labels"])
    container = pod["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/coolpy7/coolpy7-operator:0.1.0", container["image"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    account = only(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["spec"]["serviceAccountName"] == account
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        binding = only(objects, kind)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account,
                                        "namespace": NAMESPACE}], binding["subjects"]
    assert only(objects, "ClusterRoleBinding")["roleRef"]["name"] == \
        only(objects, "ClusterRole")["metadata"]["name"]
    assert only(objects, "RoleBinding")["roleRef"]["name"] == only(objects, "Role")["metadata"]["name"]
    metrics = only(objects, "Service")
    assert metrics["spec"]["selector"] == selector, metrics["spec"]["selector"]
    for doc in objects.values():
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, doc["metadata"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", doc["metadata"]
        assert labels["helm.sh/chart"] == "coolpy7-0.1.0"
    assert "mosquitto_sub" in notes and "loadBalancer" in notes, notes


DEFAULT_LISTENERS = {"mqtt": {"enabled": True},
                     "tls": {"enabled": False, "port": 8883},
                     "websocket": {"enabled": False, "port": 8083},
                     "websocketTls": {"enabled": False, "port": 8084},
                     "coap": {"enabled": False, "port": 5683},
                     "websocketPath": "/mqtt"}


def check_tls_is_off_by_default():
    for values in ({}, {"cluster": {"tls": {"secretName": "my-cert"}}},
                   {"cluster": {"listeners": {"websocket": {"enabled": True}}}}):
        objects, notes = render(values)
        validate(objects)
        assert not [k for k in objects if k[0] == "Certificate"], (values, list(objects))
        assert "mqtts" not in notes and "cert-manager" not in notes, notes
    # A certificate Secret alone is passed on (the operator leaves it unused without a TLS
    # listener); no Certificate without an issuer.
    objects, _ = render({"cluster": {"tls": {"secretName": "my-cert"}}})
    assert only(objects, "Coolpy7Cluster")["spec"]["tls"] == {
        "secretName": "my-cert", "usernameFromCertificate": "off"}
    objects, notes = render({"cluster": {"listeners": {"websocket": {"enabled": True}}}})
    spec = only(objects, "Coolpy7Cluster")["spec"]
    assert spec["listeners"]["websocket"] == {"enabled": True, "port": 8083}
    assert "tls" not in spec, "WebSocket needs no certificate"
    assert "ws://$MQTT_HOST:8083/mqtt" in notes, notes


def check_listeners_and_tls_become_the_cluster_spec():
    objects, notes = render({"cluster": {
        "ports": {"mqtt": 1884},
        "listeners": {"mqtt": {"enabled": False}, "tls": {"enabled": True, "port": 8884},
                      "websocket": {"enabled": True}, "websocketTls": {"enabled": True},
                      "websocketPath": "/ws"},
        "tls": {"secretName": "mq-cert", "clientCASecretName": "iot-ca",
                "clientCAKey": "bundle.pem", "verifyClients": "optional",
                "usernameFromCertificate": "cn"},
        "proxyProtocol": True,
    }})
    validate(objects)
    assert not [k for k in objects if k[0] == "Certificate"], "no issuer, no Certificate"
    spec = only(objects, "Coolpy7Cluster")["spec"]
    assert spec["listeners"] == {"mqtt": {"enabled": False},
                                 "tls": {"enabled": True, "port": 8884},
                                 "websocket": {"enabled": True, "port": 8083},
                                 "websocketTls": {"enabled": True, "port": 8084},
                                 "coap": {"enabled": False, "port": 5683},
                                 "websocketPath": "/ws"}, spec["listeners"]
    assert spec["tls"] == {"secretName": "mq-cert", "clientCASecretName": "iot-ca",
                           "clientCAKey": "bundle.pem", "verifyClients": "optional",
                           "usernameFromCertificate": "cn"}, spec["tls"]
    assert spec["proxyProtocol"] is True
    assert "-p 1884" not in notes, "no plain MQTT to connect to"
    assert "-p 8884 --cafile ca.crt --cert client.crt --key client.key" in notes, notes
    assert "ws://$MQTT_HOST:8083/ws" in notes and "wss://$MQTT_HOST:8084/ws" in notes, notes
    assert "PROXY protocol" in notes, notes

    # A values file's bare off is YAML 1.1's false: read as off.
    objects, _ = render({"cluster": {"tls": {"secretName": "c",
                                             "usernameFromCertificate": False}}})
    assert only(objects, "Coolpy7Cluster")["spec"]["tls"]["usernameFromCertificate"] == "off"

    objects, notes = render({"cluster": {"service": {"type": "ClusterIP"},
                                         "listeners": {"tls": {"enabled": True}},
                                         "tls": {"secretName": "c"}}})
    assert "mqtts://coolpy7.mqtt.svc:8883" in notes, notes
    assert "port-forward svc/coolpy7 -n mqtt 1883 8883" in notes, notes


def check_cert_manager_certificate():
    """Rendered only with an issuer; the cluster then uses the Secret it writes."""
    objects, notes = render({"cluster": {
        "listeners": {"tls": {"enabled": True}, "websocketTls": {"enabled": True}},
        "tls": {"certManager": {"issuerRef": {"name": "iot-ca-issuer"}}},
    }})
    validate(objects)
    certificate = only(objects, "Certificate")
    assert certificate["metadata"]["name"] == "coolpy7"
    assert certificate["metadata"]["namespace"] == NAMESPACE
    assert certificate["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert certificate["spec"] == {
        "secretName": "coolpy7-tls",
        "dnsNames": ["coolpy7", "coolpy7.mqtt", "coolpy7.mqtt.svc",
                     "coolpy7.mqtt.svc.cluster.local"],
        "privateKey": {"rotationPolicy": "Always"},
        "issuerRef": {"name": "iot-ca-issuer", "kind": "Issuer", "group": "cert-manager.io"},
    }, certificate["spec"]
    spec = only(objects, "Coolpy7Cluster")["spec"]
    assert spec["tls"] == {"secretName": "coolpy7-tls", "usernameFromCertificate": "off"}
    assert "Secret coolpy7-tls" in notes and "TlsSecretMissing" in notes, notes

    # Everything given: the user's Secret name, names, lifetimes, a ClusterIssuer, a cluster
    # name and domain of their own.
    objects, _ = render({"cluster": {
        "name": "mq",
        "listeners": {"tls": {"enabled": True}},
        "tls": {"secretName": "mq-cert", "clientCASecretName": "mq-cert",
                "certManager": {"issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"},
                                "dnsNames": ["mqtt.example.org"],
                                "duration": "2160h", "renewBefore": "360h"}},
    }, "operator": {"clusterDomain": "example.local"}})
    validate(objects)
    certificate = only(objects, "Certificate")["spec"]
    assert certificate["secretName"] == "mq-cert"
    assert certificate["dnsNames"] == ["mqtt.example.org"]
    assert (certificate["duration"], certificate["renewBefore"]) == ("2160h", "360h")
    assert certificate["issuerRef"]["kind"] == "ClusterIssuer"
    spec = only(objects, "Coolpy7Cluster")["spec"]
    assert spec["tls"] == {"secretName": "mq-cert", "clientCASecretName": "mq-cert",
                           "clientCAKey": "ca.crt", "usernameFromCertificate": "off"}

    objects, _ = render({"cluster": {
        "name": "mq", "tls": {"certManager": {"issuerRef": {"name": "x"}}}},
        "operator": {"clusterDomain": "example.local"}})
    assert only(objects, "Certificate")["spec"]["dnsNames"][-1] == "mq.mqtt.svc.example.local"

    # No cluster, no Certificate.
    objects, _ = render({"cluster": {"enabled": False,
                                     "tls": {"certManager": {"issuerRef": {"name": "x"}}}}})
    assert not [k for k in objects if k[0] == "Certificate"]


def check_the_crd_bounds_the_listeners_and_tls():
    """What the schema says without CEL (the CEL rules are evaluated by operator/tests/crd.rs)."""
    schema = crd_schema()

    def cluster(spec):
        return {"apiVersion": "coolpy7.io/v1alpha1", "kind": "Coolpy7Cluster",
                "metadata": {"name": "c", "namespace": NAMESPACE}, "spec": spec}

    jsonschema.validate(cluster({"listeners": DEFAULT_LISTENERS,
                                 "tls": {"secretName": "c", "usernameFromCertificate": "off"}}),
                        schema)
    for spec in ({"listeners": {"tls": {"port": 0}}},
                 {"listeners": {"websocketTls": {"port": 65536}}},
                 {"listeners": {"websocket": {"enabled": "yes"}}},
                 {"listeners": {"websocketPath": "mqtt"}},
                 {"listeners": {"websocketPath": "/mqtt?token=x"}},
                 {"listeners": {"websocketPath": "/a b"}},
                 {"tls": {"verifyClients": "always"}},
                 {"tls": {"usernameFromCertificate": False}},
                 {"tls": {"clientCAKey": "../ca.crt"}},
                 {"proxyProtocol": "true"}):
        try:
            jsonschema.validate(cluster(spec), schema)
        except jsonschema.ValidationError:
            pass
        else:
            raise AssertionError(f"the CRD accepted {spec}")


def objects_of(objects, kind):
    return {name: doc for (k, name), doc in objects.items() if k == kind}


def check_auth_limits_and_coap_are_off_by_default():
    objects, notes = render({})
    spec = only(objects, "Coolpy7Cluster")["spec"]
    for field in ("auth", "limits"):
        assert field not in spec, (field, spec.get(field))
    assert spec["listeners"]["coap"] == {"enabled": False, "port": 5683}
    assert not objects_of(objects, "Secret") and not objects_of(objects, "ConfigMap")
    assert "authenticate" not in notes and "coap" not in notes, notes
    # Settings without a mode, rules or a default decision render nothing: mode none with
    # nothing to check is the broker's default.
    objects, notes = render({"cluster": {
        "auth": {"jwtSecret": {"name": "jwt", "key": "hmac"},
                 "httpHook": {"url": "http://auth.iot.svc/mqtt", "timeoutSeconds": 5}},
        "limits": {"pingIntervalSeconds": 0, "publishRate": {"messages": 0, "bytes": 0}},
        "listeners": {"coap": {"port": 5684}}}})
    validate(objects)
    spec = only(objects, "Coolpy7Cluster")["spec"]
    assert "auth" not in spec and "limits" not in spec, spec
    assert "authenticate" not in notes and "coap" not in notes, notes


def check_auth_becomes_the_cluster_spec():
    def spec_and_notes(auth, **cluster):
        objects, notes = render({"cluster": {"auth": auth, **cluster}})
        validate(objects)
        return only(objects, "Coolpy7Cluster")["spec"], objects, notes

    spec, objects, notes = spec_and_notes(
        {"mode": "jwt", "jwtSecret": {"name": "mq-jwt", "key": "hmac"}})
    assert spec["auth"] == {"mode": "jwt", "jwtSecret": {"name": "mq-jwt", "key": "hmac"}}, \
        spec["auth"]
    assert not objects_of(objects, "Secret"), "the user's Secret, not the chart's"
    assert "Clients must authenticate (cluster.auth.mode=jwt)" in notes, notes
    assert "HMAC secret in Secret mq-jwt (key hmac)" in notes, notes
    assert '-p 1883 -u device-1 -P "$TOKEN"' in notes, notes
    assert "AuthSecretMissing" in notes, notes

    spec, _, notes = spec_and_notes(
        {"mode": "jwt", "jwtPublicKey": {"name": "issuer", "key": "es256.pem"}})
    assert spec["auth"] == {"mode": "jwt",
                            "jwtPublicKey": {"name": "issuer", "key": "es256.pem"}}
    assert "public key in Secret issuer (key es256.pem)" in notes, notes

    # An existing password Secret: named, not written.
    spec, objects, _ = spec_and_notes(
        {"mode": "password", "passwords": {"existingSecret": "mq-users", "key": "htpasswd"}})
    assert spec["auth"] == {"mode": "password",
                            "passwordSecret": {"name": "mq-users", "key": "htpasswd"}}
    assert not objects_of(objects, "Secret")

    # Inline content and rules: the chart writes the Secret and the ConfigMap the cluster names.
    content = "alice:$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA\nbob:$7$101$x$y\n"
    rules = 'allow publish sensors/%u/# user alice\ndeny subscribe "#"\nallow all public/#\n'
    spec, objects, notes = spec_and_notes(
        {"mode": "password", "passwords": {"content": content},
         "acl": {"rules": rules}, "aclDefault": "allow"},
        name="mq")
    assert spec["auth"] == {"mode": "password",
                            "passwordSecret": {"name": "mq-passwords", "key": "passwords"},
                            "aclConfigMap": {"name": "mq-acl", "key": "acl"},
                            "aclDefault": "allow"}, spec["auth"]
    secret = objects_of(objects, "Secret")["mq-passwords"]
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert secret["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["passwords"]).decode() == content, "byte for byte"
    config_map = objects_of(objects, "ConfigMap")["mq-acl"]
    assert config_map["data"] == {"acl": rules}, "byte for byte"
    assert "Secret mq-passwords (key passwords" in notes, notes
    assert "ConfigMap mq-acl (key acl)" in notes and "no rule matches is allowed" in notes, notes

    # Rules in any mode, from an existing ConfigMap; the default decision alone.
    spec, objects, notes = spec_and_notes(
        {"acl": {"existingConfigMap": "rules", "key": "acl.conf"}})
    assert spec["auth"] == {"mode": "none", "aclConfigMap": {"name": "rules", "key": "acl.conf"}}
    assert not objects_of(objects, "ConfigMap")
    assert "authenticate" not in notes and "ConfigMap rules (key acl.conf)" in notes, notes
    assert "no rule matches is denied" in notes, notes
    spec, _, _ = spec_and_notes({"aclDefault": "deny"})
    assert spec["auth"] == {"mode": "none", "aclDefault": "deny"}

    # The HTTP service: 0 is a value (no cache), null the broker's default.
    spec, _, notes = spec_and_notes(
        {"mode": "http", "httpHook": {"url": "http://auth.iot.svc:8443/mqtt",
                                      "tokenSecret": {"name": "hook", "key": "token"},
                                      "timeoutSeconds": 5, "cacheSeconds": 0}})
    assert spec["auth"] == {"mode": "http", "httpHook": {
        "url": "http://auth.iot.svc:8443/mqtt", "tokenSecret": {"name": "hook", "key": "token"},
        "timeoutSeconds": 5, "cacheSeconds": 0}}, spec["auth"]
    assert "ask http://auth.iot.svc:8443/mqtt" in notes and "Secret hook" in notes, notes
    spec, _, notes = spec_and_notes({"mode": "http", "httpHook": {"url": "http://a.b/c"}})
    assert spec["auth"] == {"mode": "http", "httpHook": {"url": "http://a.b/c"}}
    assert "AuthSecretMissing" not in notes, "nothing mounted, nothing to miss"


def check_limits_and_coap_become_the_cluster_spec():
    objects, _ = render({"cluster": {"limits": {
        "pingIntervalSeconds": 10, "publishIntervalMillis": 50, "banSeconds": 31536000,
        "connectionRate": 200, "publishRate": {"messages": 100, "bytes": 5000000000}}}})
    validate(objects)
    assert only(objects, "Coolpy7Cluster")["spec"]["limits"] == {
        "pingIntervalSeconds": 10, "publishIntervalMillis": 50, "banSeconds": 31536000,
        "connectionRate": 200, "publishRate": {"messages": 100, "bytes": 5000000000}}
    objects, _ = render({"cluster": {"limits": {"banSeconds": 60,
                                                "publishRate": {"messages": 0, "bytes": 65536}}}})
    assert only(objects, "Coolpy7Cluster")["spec"]["limits"] == {
        "banSeconds": 60, "publishRate": {"bytes": 65536}}, "0 is off: left out"

    objects, notes = render({"cluster": {"listeners": {"coap": {"enabled": True}}}})
    validate(objects)
    assert only(objects, "Coolpy7Cluster")["spec"]["listeners"]["coap"] == {
        "enabled": True, "port": 5683}
    assert "coap://$MQTT_HOST:5683" in notes and "1.26" in notes, notes
    objects, notes = render({"cluster": {"service": {"type": "ClusterIP"},
                                         "listeners": {"coap": {"enabled": True, "port": 5684}}}})
    assert "coap://coolpy7.mqtt.svc:5684 (UDP)" in notes, notes
    assert "port-forward svc/coolpy7 -n mqtt 1883\n" in notes + "\n", "no UDP to forward"
    assert "does not carry CoAP" in notes, notes


def check_wrong_auth_and_limit_values_are_refused():
    for auth, expected in [
        ({"mode": "jwt"}, "needs one of cluster.auth.jwtSecret"),
        ({"mode": "jwt", "jwtSecret": {"name": "a", "key": "k"},
          "jwtPublicKey": {"name": "b", "key": "k"}}, "not both"),
        ({"mode": "jwt", "jwtSecret": {"name": "a"}}, "cluster.auth.jwtSecret.key"),
        ({"mode": "password"}, "cluster.auth.passwords.existingSecret"),
        ({"mode": "password", "passwords": {"existingSecret": "a", "content": "u:h"}},
         "existingSecret or content, not both"),
        ({"acl": {"existingConfigMap": "a", "rules": "allow all #"}},
         "existingConfigMap or rules, not both"),
        ({"mode": "http"}, "cluster.auth.httpHook.url"),
        ({"mode": "http", "httpHook": {"url": "http://a/", "tokenSecret": {"name": "t"}}},
         "cluster.auth.httpHook.tokenSecret.key"),
    ]:
        message = expect_refused({"cluster": {"auth": auth}}, expected)
        assert expected in message, (auth, message)
    for values, why in [
        ({"auth": {"mode": "ldap"}}, "none/jwt/http/password"),
        ({"auth": {"aclDefault": "maybe"}}, "allow or deny"),
        ({"auth": {"passwords": {"key": "../passwd"}}}, "a Secret key, not a path"),
        ({"auth": {"jwtSecret": {"name": "a", "key": "a/b"}}}, "a Secret key, not a path"),
        ({"auth": {"httpHook": {"url": "ftp://auth"}}}, "an http URL"),
        ({"auth": {"httpHook": {"url": "https://auth/"}}}, "no HTTPS yet"),
        ({"auth": {"httpHook": {"url": "http://u:p@auth/"}}}, "no credentials in the URL"),
        ({"auth": {"httpHook": {"timeoutSeconds": 61}}}, "-hat is 1..60"),
        ({"auth": {"httpHook": {"cacheSeconds": -1}}}, "-hac is 0..86400"),
        ({"auth": {"secret": "x"}}, "unknown keys are typos"),
        ({"limits": {"banSeconds": -1}}, "limits are 0 or more"),
        ({"limits": {"pingIntervalSeconds": 86401}}, "-pl is at most a day"),
        ({"limits": {"publishRate": {"bytes": "1M"}}}, "bytes is an integer"),
        ({"limits": {"connectionrate": 5}}, "unknown keys are typos"),
        ({"listeners": {"coap": {"port": 0}}}, "ports are 1..65535"),
        ({"listeners": {"coap": {"enabled": "yes"}}}, "enabled is a boolean"),
    ]:
        expect_refused({"cluster": values}, why)


def check_auth_and_limits_values_mirror_the_crd():
    """The values' enums and bounds are the CRD's, so the chart refuses what the API server
    would, at install time."""
    values = json.loads((CHART / "values.schema.json").read_text())
    cluster = values["properties"]["cluster"]["properties"]
    spec = crd_schema()["properties"]["spec"]["properties"]
    auth, crd_auth = cluster["auth"]["properties"], spec["auth"]["properties"]
    assert auth["mode"]["enum"] == crd_auth["mode"]["enum"], auth["mode"]
    assert auth["aclDefault"]["enum"] == [""] + [v for v in crd_auth["aclDefault"]["enum"]
                                                 if v is not None]
    hook, crd_hook = auth["httpHook"]["properties"], crd_auth["httpHook"]["properties"]
    for field in ("timeoutSeconds", "cacheSeconds"):
        bounded = [s for s in hook[field]["oneOf"] if s["type"] == "integer"][0]
        assert (bounded["minimum"], bounded["maximum"]) == (
            crd_hook[field]["minimum"], crd_hook[field]["maximum"]), field
    limits, crd_limits = cluster["limits"]["properties"], spec["limits"]["properties"]
    assert set(limits) == set(crd_limits), (set(limits), set(crd_limits))
    for field, schema in crd_limits.items():
        if field == "publishRate":
            continue
        assert limits[field]["minimum"] == schema["minimum"], field
        assert limits[field].get("maximum") == schema.get("maximum", 2147483647), field
    rate, crd_rate = limits["publishRate"]["properties"], crd_limits["publishRate"]["properties"]
    assert set(rate) == set(crd_rate)
    coap = cluster["listeners"]["properties"]["coap"]["properties"]
    crd_coap = spec["listeners"]["properties"]["coap"]["properties"]
    assert set(coap) == set(crd_coap)
    # Defaults: the chart's listeners.coap is the CRD's default (check_defaults compares the
    # whole listeners block), and values.yaml's auth mode is the CRD's.
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["cluster"]
    assert defaults["auth"]["mode"] == crd_auth["mode"]["default"]


def check_the_crd_bounds_auth_limits_and_coap():
    """What the schema refuses without CEL (the CEL rules are evaluated by operator/tests/crd.rs)."""
    schema = crd_schema()

    def cluster(spec):
        return {"apiVersion": "coolpy7.io/v1alpha1", "kind": "Coolpy7Cluster",
                "metadata": {"name": "c", "namespace": NAMESPACE}, "spec": spec}

    for spec in ({"auth": {"mode": "jwt", "jwtSecret": {"name": "j", "key": "hmac"},
                           "aclConfigMap": {"name": "a", "key": "acl.conf"},
                           "aclDefault": "allow"}},
                 {"auth": {"mode": "http", "httpHook": {"url": "http://a.b:8443/c",
                                                        "timeoutSeconds": 60,
                                                        "cacheSeconds": 86400}}},
                 {"limits": {"pingIntervalSeconds": 86400, "publishIntervalMillis": 86400000,
                             "banSeconds": 31536000, "connectionRate": 0,
                             "publishRate": {"messages": 1, "bytes": 10 ** 12}}},
                 {"listeners": {**DEFAULT_LISTENERS, "coap": {"enabled": True, "port": 1}}}):
        jsonschema.validate(cluster(spec), schema)
    for spec in ({"auth": {"mode": "ldap"}},
                 {"auth": {"aclDefault": "maybe"}},
                 {"auth": {"passwordSecret": {"name": "p"}}},
                 {"auth": {"passwordSecret": {"name": "p", "key": "../etc/passwd"}}},
                 {"auth": {"jwtSecret": {"name": "", "key": "k"}}},
                 {"auth": {"aclConfigMap": {"name": "a", "key": "a b"}}},
                 {"auth": {"httpHook": {"url": "ftp://auth"}}},
                 {"auth": {"httpHook": {"url": "http://a b"}}},
                 {"auth": {"httpHook": {"timeoutSeconds": 5}}},
                 {"auth": {"httpHook": {"url": "http://a/", "timeoutSeconds": 0}}},
                 {"auth": {"httpHook": {"url": "http://a/", "cacheSeconds": 86401}}},
                 {"limits": {"banSeconds": -1}},
                 {"limits": {"banSeconds": 31536001}},
                 {"limits": {"publishIntervalMillis": 86400001}},
                 {"limits": {"publishRate": {"bytes": -5}}},
                 {"limits": {"connectionRate": "10"}},
                 {"listeners": {"coap": {"port": 65536}}},
                 {"listeners": {"coap": {"enabled": "true"}}}):
        try:
            jsonschema.validate(cluster(spec), schema)
        except jsonschema.ValidationError:
            pass
        else:
            raise AssertionError(f"the CRD accepted {spec}")


def check_forwarding_sizes_become_the_cluster_spec():
    def spec_of(sizes):
        objects, _ = render({"cluster": {"forwarding": sizes}})
        validate(objects)
        return only(objects, "Coolpy7Cluster")["spec"]

    # Beyond 4 GiB and 2^31: whole numbers, not floats.
    assert spec_of({"bufferBytes": 8589934592, "recordLimitBytes": 3000000000})["forwarding"] == {
        "bufferBytes": 8589934592, "recordLimitBytes": 3000000000}
    assert spec_of({"recordLimitBytes": 0})["forwarding"] == {"recordLimitBytes": 0}, \
        "0 is a value (no limit), not an absent field"
    assert spec_of({"recordLimitBytes": 64})["forwarding"] == {"recordLimitBytes": 64}
    assert spec_of({"bufferBytes": 65536})["forwarding"] == {"bufferBytes": 65536}
    for sizes in ({}, None, {"bufferBytes": None, "recordLimitBytes": None,
                             "sharedSubscriptions": None}):
        assert "forwarding" not in spec_of(sizes), sizes
    for policy in ("local", "cluster"):
        assert spec_of({"sharedSubscriptions": policy})["forwarding"] == {
            "sharedSubscriptions": policy}
    assert spec_of({"recordLimitBytes": 0, "sharedSubscriptions": "cluster"})["forwarding"] == {
        "recordLimitBytes": 0, "sharedSubscriptions": "cluster"}


def check_wrong_forwarding_values_are_refused():
    for limit in (1, 63):
        message = expect_refused({"cluster": {"forwarding": {"recordLimitBytes": limit}}},
                                 "-csl is 0 or at least 64")
        assert f"cluster.forwarding.recordLimitBytes is {limit}: 0 (no limit) or at least 64" \
            in message, message
    for values, why in [
        ({"recordLimitBytes": -1}, "-csl is 0 or more"),
        ({"recordLimitBytes": "4096"}, "an integer"),
        ({"bufferBytes": 65535}, "-csb is at least 65536"),
        ({"bufferBytes": 0}, "-csb has no off"),
        ({"bufferBytes": 65536.5}, "an integer"),
        ({"syncBuffer": 65536}, "unknown keys are typos"),
        ({"sharedSubscriptions": "Local"}, "-ssp is local or cluster, lowercase"),
        ({"sharedSubscriptions": "both"}, "-ssp is local or cluster"),
    ]:
        message = expect_refused({"cluster": {"forwarding": values}}, why)
        assert next(iter(values)) in message, message


def check_forwarding_values_mirror_the_crd():
    """The values' bounds are the CRD's; the CRD refuses what the broker would, its CEL rule on
    recordLimitBytes aside (evaluated by operator/tests/crd.rs, and by the template's fail)."""
    values = json.loads((CHART / "values.schema.json").read_text())
    sizes = values["properties"]["cluster"]["properties"]["forwarding"]["properties"]
    schema = crd_schema()
    crd_sizes = schema["properties"]["spec"]["properties"]["forwarding"]["properties"]
    assert set(sizes) == set(crd_sizes), (set(sizes), set(crd_sizes))
    policy = [s for s in sizes["sharedSubscriptions"]["oneOf"] if s["type"] == "string"][0]
    crd_policies = [e for e in crd_sizes["sharedSubscriptions"]["enum"] if e is not None]
    assert policy["enum"] == crd_policies, "the CRD's enum"
    for field, crd in crd_sizes.items():
        if field == "sharedSubscriptions":
            continue
        bounded = [s for s in sizes[field]["oneOf"] if s["type"] == "integer"][0]
        assert bounded["minimum"] == crd["minimum"], field
        assert "maximum" not in bounded and "maximum" not in crd, field
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["cluster"]["forwarding"]
    assert defaults == {field: None for field in crd_sizes}, "null: the broker's defaults"

    def cluster(sizes):
        return {"apiVersion": "coolpy7.io/v1alpha1", "kind": "Coolpy7Cluster",
                "metadata": {"name": "c", "namespace": NAMESPACE}, "spec": {"forwarding": sizes}}

    for sizes in ({}, {"bufferBytes": 65536, "recordLimitBytes": 0},
                  {"bufferBytes": 10 ** 12, "recordLimitBytes": 10 ** 12}):
        jsonschema.validate(cluster(sizes), schema)
    jsonschema.validate(cluster({"sharedSubscriptions": "cluster"}), schema)
    for sizes in ({"bufferBytes": 65535}, {"recordLimitBytes": -1},
                  {"recordLimitBytes": "0"}, {"bufferBytes": 1.5},
                  {"sharedSubscriptions": "Cluster"}):
        try:
            jsonschema.validate(cluster(sizes), schema)
        except jsonschema.ValidationError as error:
            assert next(iter(sizes)) in error.json_path, error.json_path
        else:
            raise AssertionError(f"the CRD accepted {sizes}")


def check_drain_and_min_ready_seconds_become_the_cluster_spec():
    def spec_of(values):
        objects, _ = render({"cluster": values})
        validate(objects)
        return only(objects, "Coolpy7Cluster")["spec"]

    spec = spec_of({"drain": {"graceSeconds": 120, "disconnectRate": 4294967295,
                              "serverReference": "mqtt.example.org:1883"},
                    "minReadySeconds": 30})
    assert spec["drain"] == {"graceSeconds": 120, "disconnectRate": 4294967295,
                             "serverReference": "mqtt.example.org:1883"}, spec["drain"]
    assert spec["minReadySeconds"] == 30
    # 0 is a value (at once, no wait), not an absent field.
    spec = spec_of({"drain": {"graceSeconds": 0, "disconnectRate": 0}, "minReadySeconds": 0})
    assert spec["drain"] == {"graceSeconds": 0, "disconnectRate": 0}, spec["drain"]
    assert spec["minReadySeconds"] == 0
    assert spec_of({"drain": {"graceSeconds": 86400}})["drain"] == {"graceSeconds": 86400}
    # A reference YAML would read otherwise stays the string it is.
    for reference in ("on", "1883", "a: b", "use 'mq-2' # now", "mqtt.example.org:8883"):
        assert spec_of({"drain": {"serverReference": reference}})["drain"] == {
            "serverReference": reference}, reference
    assert spec_of({"drain": {"serverReference": "€" * 21845}})["drain"] == {
        "serverReference": "€" * 21845}, "65535 bytes"
    for values in ({}, {"drain": {}}, {"drain": None}, {"minReadySeconds": None},
                   {"drain": {"graceSeconds": None, "disconnectRate": None,
                              "serverReference": None}}):
        spec = spec_of(values)
        assert "drain" not in spec, values
        assert "minReadySeconds" not in spec, values


def check_wrong_drain_values_are_refused():
    message = expect_refused({"cluster": {"drain": {"serverReference": "€" * 21846}}},
                             "-dsr is at most 65535 bytes")
    assert "cluster.drain.serverReference is 65538 bytes: at most 65535 bytes" in message, message
    for values, why in [
        ({"drain": {"graceSeconds": -1}}, "-dg is 0..86400"),
        ({"drain": {"graceSeconds": 86401}}, "-dg is 0..86400"),
        ({"drain": {"graceSeconds": "30"}}, "an integer"),
        ({"drain": {"graceSeconds": 1.5}}, "an integer"),
        ({"drain": {"disconnectRate": -1}}, "-dr is 0 or more"),
        ({"drain": {"disconnectRate": 4294967296}}, "-dr is a u32"),
        ({"drain": {"serverReference": ""}}, "-dsr is not empty"),
        ({"drain": {"serverReference": "a\0b"}}, "-dsr has no NUL"),
        ({"drain": {"serverReference": 1883}}, "a string"),
        ({"drain": {"grace": 30}}, "unknown keys are typos"),
        ({"minReadySeconds": -1}, "0 or more"),
        ({"minReadySeconds": "10"}, "an integer"),
    ]:
        message = expect_refused({"cluster": values}, why)
        field = next(iter(values["drain"])) if "drain" in values else "minReadySeconds"
        assert field in message, message


def check_drain_values_mirror_the_crd():
    """The values' bounds are the CRD's, and the CRD refuses what the broker would (the byte
    length of serverReference aside: a CEL rule, evaluated by operator/tests/crd.rs, and by the
    template's fail)."""
    values = json.loads((CHART / "values.schema.json").read_text())
    cluster_values = values["properties"]["cluster"]["properties"]
    drain = cluster_values["drain"]["properties"]
    schema = crd_schema()
    spec = schema["properties"]["spec"]["properties"]
    crd_drain = spec["drain"]["properties"]
    assert set(drain) == set(crd_drain), (set(drain), set(crd_drain))
    for field in ("graceSeconds", "disconnectRate"):
        bounded = [s for s in drain[field]["oneOf"] if s["type"] == "integer"][0]
        assert (bounded["minimum"], bounded["maximum"]) == (
            crd_drain[field]["minimum"], crd_drain[field]["maximum"]), field
    reference = [s for s in drain["serverReference"]["oneOf"] if s["type"] == "string"][0]
    for bound in ("minLength", "maxLength", "pattern"):
        assert reference[bound] == crd_drain["serverReference"][bound], bound
    min_ready = [s for s in cluster_values["minReadySeconds"]["oneOf"]
                 if s["type"] == "integer"][0]
    assert min_ready["minimum"] == spec["minReadySeconds"]["minimum"]
    assert min_ready["maximum"] == 2147483647 and spec["minReadySeconds"]["format"] == "int32"
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["cluster"]
    assert defaults["drain"] == {field: None for field in crd_drain}, "null: the broker's defaults"
    assert defaults["minReadySeconds"] is None, "null: the operator's default"

    def cluster(spec):
        return {"apiVersion": "coolpy7.io/v1alpha1", "kind": "Coolpy7Cluster",
                "metadata": {"name": "c", "namespace": NAMESPACE}, "spec": spec}

    for good in ({"drain": {}}, {"minReadySeconds": 0}, {"minReadySeconds": 600},
                 {"drain": {"graceSeconds": 0, "disconnectRate": 0, "serverReference": "a"}},
                 {"drain": {"graceSeconds": 86400, "disconnectRate": 4294967295,
                            "serverReference": "a" * 65535}}):
        jsonschema.validate(cluster(good), schema)
    for bad, field in (({"drain": {"graceSeconds": -1}}, "graceSeconds"),
                       ({"drain": {"graceSeconds": 86401}}, "graceSeconds"),
                       ({"drain": {"graceSeconds": "30"}}, "graceSeconds"),
                       ({"drain": {"disconnectRate": -1}}, "disconnectRate"),
                       ({"drain": {"disconnectRate": 4294967296}}, "disconnectRate"),
                       ({"drain": {"serverReference": ""}}, "serverReference"),
                       ({"drain": {"serverReference": "a" * 65536}}, "serverReference"),
                       ({"drain": {"serverReference": "a\0b"}}, "serverReference"),
                       ({"minReadySeconds": -1}, "minReadySeconds"),
                       ({"minReadySeconds": 1.5}, "minReadySeconds")):
        try:
            jsonschema.validate(cluster(bad), schema)
        except jsonschema.ValidationError as error:
            assert field in error.json_path, error.json_path
        else:
            raise AssertionError(f"the CRD accepted {bad}")


DEFAULT_PERSISTENCE = {"enabled": False, "size": "1Gi", "fsyncIntervalMs": 0}


def check_persistence_becomes_the_cluster_spec():
    def spec_of(values):
        objects, _ = render({"cluster": values})
        validate(objects)
        return only(objects, "Coolpy7Cluster")["spec"]

    assert spec_of({"persistence": {"enabled": True, "size": "20Gi",
                                    "storageClassName": "fast-ssd",
                                    "fsyncIntervalMs": 10000}})["persistence"] == {
        "enabled": True, "size": "20Gi", "storageClassName": "fast-ssd",
        "fsyncIntervalMs": 10000}
    # Only what is given changes; the rest keeps the defaults.
    assert spec_of({"persistence": {"enabled": True}})["persistence"] == {
        **DEFAULT_PERSISTENCE, "enabled": True}
    # "" is a class (none), not a value left out.
    assert spec_of({"persistence": {"enabled": True, "storageClassName": ""}})[
        "persistence"] == {**DEFAULT_PERSISTENCE, "enabled": True, "storageClassName": ""}
    assert "storageClassName" not in spec_of(
        {"persistence": {"storageClassName": None}})["persistence"]
    # Sizes YAML would read as numbers stay the strings they are.
    for size in ("1e3", "10", "1.5Ti", "500M", ".5Gi", "2E+9"):
        assert spec_of({"persistence": {"enabled": True, "size": size}})["persistence"][
            "size"] == size, size
    # null: left to the CRD's default, which is off.
    assert "persistence" not in spec_of({"persistence": None})
    # Off: the values are passed on all the same (the operator ignores them).
    assert spec_of({"persistence": {"size": "5Gi", "fsyncIntervalMs": 100}})[
        "persistence"] == {"enabled": False, "size": "5Gi", "fsyncIntervalMs": 100}


def check_wrong_persistence_values_are_refused():
    for size in ("0", "0Gi", "0.0", "000e3"):
        message = expect_refused({"cluster": {"persistence": {"enabled": True, "size": size}}},
                                 "a claim of zero bytes")
        assert f"cluster.persistence.size is {size}, zero" in message, message
    for values, why in [
        ({"enabled": "yes"}, "true or false"),
        ({"enabled": 1}, "true or false"),
        ({"size": "10GB"}, "not a quantity"),
        ({"size": "512m"}, "m is milli: 512Mi was meant"),
        ({"size": "1Ki "}, "not a quantity"),
        ({"size": "-1Gi"}, "no sign"),
        ({"size": "1e-3"}, "no negative exponent"),
        ({"size": ""}, "a size"),
        ({"size": 10}, "a string (--set-string)"),
        # A null takes the default away (Helm's merge): refused as missing.
        ({"size": None}, "a size"),
        ({"enabled": None}, "true or false"),
        ({"fsyncIntervalMs": None}, "an integer"),
        ({"storageClassName": "Fast_SSD"}, "a DNS subdomain"),
        ({"storageClassName": "-fast"}, "a DNS subdomain"),
        ({"storageClassName": "a" * 254}, "at most 253 characters"),
        ({"storageClassName": 5}, "a string"),
        ({"fsyncIntervalMs": -1}, "-dfs is 0..10000"),
        ({"fsyncIntervalMs": 10001}, "-dfs is 0..10000"),
        ({"fsyncIntervalMs": "100"}, "an integer"),
        ({"fsyncIntervalMs": 1.5}, "an integer"),
        ({"retain": True}, "unknown keys are typos"),
    ]:
        message = expect_refused({"cluster": {"persistence": values}}, why)
        assert next(iter(values)) in message, message


def check_persistence_values_mirror_the_crd():
    """The values' bounds and patterns are the CRD's, and the CRD's patterns take the sizes and
    classes the operator takes (its spec_problem also refuses 0, which the template does)."""
    values = json.loads((CHART / "values.schema.json").read_text())
    persistence = values["properties"]["cluster"]["properties"]["persistence"]["properties"]
    schema = crd_schema()
    crd = schema["properties"]["spec"]["properties"]["persistence"]["properties"]
    assert set(persistence) == set(crd), (set(persistence), set(crd))
    assert persistence["enabled"]["type"] == crd["enabled"]["type"] == "boolean"
    for bound in ("minLength", "maxLength", "pattern"):
        assert persistence["size"][bound] == crd["size"][bound], bound
    storage_class = [s for s in persistence["storageClassName"]["oneOf"]
                     if s["type"] == "string"][0]
    for bound in ("maxLength", "pattern"):
        assert storage_class[bound] == crd["storageClassName"][bound], bound
    for bound in ("minimum", "maximum"):
        assert persistence["fsyncIntervalMs"][bound] == crd["fsyncIntervalMs"][bound], bound
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["cluster"]["persistence"]
    assert defaults == {**DEFAULT_PERSISTENCE, "storageClassName": None}, defaults

    def cluster(spec):
        return {"apiVersion": "coolpy7.io/v1alpha1", "kind": "Coolpy7Cluster",
                "metadata": {"name": "c", "namespace": NAMESPACE}, "spec": spec}

    for size in ("1", "1Gi", "1024Mi", "0.5Gi", ".5Ki", "2.", "500M", "1k", "1e3", "1E3",
                 "2e+9", "7Ei", "8E"):
        jsonschema.validate(cluster({"persistence": {"enabled": True, "size": size}}), schema)
    for storage_class in ("", "fast", "fast-ssd", "ebs.csi.aws.com", "a" * 253):
        jsonschema.validate(cluster({"persistence": {"storageClassName": storage_class}}),
                            schema)
    for bad, field in (({"size": "1GB"}, "size"), ({"size": "1gi"}, "size"),
                       ({"size": "1K"}, "size"), ({"size": "512m"}, "size"),
                       ({"size": "1u"}, "size"), ({"size": "1e-3"}, "size"),
                       ({"size": "1e1.5"}, "size"), ({"size": "+1Gi"}, "size"),
                       ({"size": "."}, "size"), ({"size": "1 Gi"}, "size"),
                       ({"size": "1" * 65}, "size"), ({"size": 1}, "size"),
                       ({"storageClassName": "Fast"}, "storageClassName"),
                       ({"storageClassName": "fast_ssd"}, "storageClassName"),
                       ({"storageClassName": "fast."}, "storageClassName"),
                       ({"storageClassName": "a" * 254}, "storageClassName"),
                       ({"fsyncIntervalMs": 10001}, "fsyncIntervalMs"),
                       ({"fsyncIntervalMs": -1}, "fsyncIntervalMs"),
                       ({"enabled": "true"}, "enabled")):
        try:
            jsonschema.validate(cluster({"persistence": bad}), schema)
        except jsonschema.ValidationError as error:
            assert field in error.json_path, error.json_path
        else:
            raise AssertionError(f"the CRD accepted {bad}")


def check_rbac_matches_the_manifests():
    """The chart's RBAC is the same least privilege as manifests/operator.yaml."""
    objects, _ = render({})
    manifests = {doc["kind"]: doc for doc in
                 yaml.safe_load_all((ROOT / "manifests" / "operator.yaml").read_text()) if doc}
    assert only(objects, "ClusterRole")["rules"] == manifests["ClusterRole"]["rules"]
    assert only(objects, "Role")["rules"] == manifests["Role"]["rules"]


def check_operator_only():
    objects, notes = render({"cluster": {"enabled": False}})
    validate(objects)
    assert not [k for k in objects if k[0] == "Coolpy7Cluster"], "no cluster with enabled=false"
    assert only(objects, "Deployment")
    assert "cluster.enabled=false" in notes


def check_cluster_only():
    """A second cluster in a Kubernetes cluster that already runs an operator."""
    objects, notes = render({"operator": {"enabled": False}}, name="second")
    validate(objects)
    assert [kind for kind, _ in objects] == ["Coolpy7Cluster"], list(objects)
    assert "no operator" in notes


def check_cluster_scoped_names_carry_the_namespace():
    objects, _ = render({})
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        name = only(objects, kind)["metadata"]["name"]
        assert name.startswith(f"{NAMESPACE}-"), name


def check_variations():
    objects, _ = render({"cluster": {
        "replicas": 5,
        "csk": {"existingSecret": "my-key", "key": "k"},
        "service": {"type": "NodePort", "annotations": {"a.example/x": "y"},
                    "externalTrafficPolicy": "Local"},
        "podAntiAffinity": "hard",
        "podDisruptionBudget": {"minAvailable": "60%"},
        "resources": {"limits": {"memory": "1Gi"}},
        "nodeSelector": {"pool": "mqtt"},
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "mqtt": {"serverKeepAlive": 300, "receiveMaximum": 100, "topicAliasMaximum": 0,
                 "wildcardSubscriptions": False, "subscriptionIdentifiers": False},
        "extraArgs": ["-mq=5000"],
        "logLevel": "debug",
    }, "operator": {"replicas": 2, "image": {"tag": "edge"}}}, name="iot")
    validate(objects)
    spec = only(objects, "Coolpy7Cluster")["spec"]
    assert only(objects, "Coolpy7Cluster")["metadata"]["name"] == "iot-coolpy7"
    assert spec["replicas"] == 5
    assert spec["csk"] == {"secretName": "my-key", "key": "k"}
    assert spec["service"] == {"type": "NodePort", "annotations": {"a.example/x": "y"},
                               "externalTrafficPolicy": "Local"}, spec["service"]
    assert spec["podAntiAffinity"] == "hard"
    assert spec["podDisruptionBudget"] == {"enabled": True, "minAvailable": "60%"}
    assert spec["resources"] == {"limits": {"memory": "1Gi"}}
    assert spec["nodeSelector"] == {"pool": "mqtt"}
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    # 0 and false are values (no aliases, feature off), not absent ones.
    assert spec["mqtt"] == {"serverKeepAlive": 300, "receiveMaximum": 100,
                            "topicAliasMaximum": 0, "wildcardSubscriptions": False,
                            "subscriptionIdentifiers": False}, spec.get("mqtt")
    assert spec["args"] == ["-mq=5000"]
    assert spec["logLevel"] == "debug"
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":edge")

    objects, _ = render({"cluster": {"mqtt": {"receiveMaximum": 65535}}})
    validate(objects)
    assert only(objects, "Coolpy7Cluster")["spec"]["mqtt"] == {"receiveMaximum": 65535}
    objects, _ = render({"cluster": {"mqtt": {"wildcardSubscriptions": True}}})
    validate(objects)
    assert only(objects, "Coolpy7Cluster")["spec"]["mqtt"] == {"wildcardSubscriptions": True}
    objects, _ = render({"cluster": {"mqtt": None}})
    assert "mqtt" not in only(objects, "Coolpy7Cluster")["spec"]

    objects, notes = render({"cluster": {"service": {"type": "ClusterIP"}}})
    assert only(objects, "Coolpy7Cluster")["spec"]["service"]["type"] == "ClusterIP"
    assert "port-forward" in notes


# (field of spec.mqtt and cluster.mqtt, lowest, highest): the ranges of -mka, -mri, -mta.
MQTT5_LIMITS = [("serverKeepAlive", 0, 65535), ("receiveMaximum", 1, 65535),
                ("topicAliasMaximum", 0, 65535)]


# Fields of spec.mqtt and cluster.mqtt that turn a broker feature on or off: -wsa, -sia.
MQTT5_FEATURES = ["wildcardSubscriptions", "subscriptionIdentifiers"]


def check_the_crd_bounds_the_mqtt5_limits():
    """The API server refuses a Coolpy7Cluster whose MQTT 5 limits the broker would refuse,
    whoever writes it (kubectl, GitOps, this chart)."""
    schema = crd_schema()

    def cluster(mqtt):
        return {"apiVersion": "coolpy7.io/v1alpha1", "kind": "Coolpy7Cluster",
                "metadata": {"name": "c", "namespace": NAMESPACE}, "spec": {"mqtt": mqtt}}

    jsonschema.validate(cluster({}), schema)
    for field, low, high in MQTT5_LIMITS:
        for value in (low, high):
            jsonschema.validate(cluster({field: value}), schema)
        for value in (low - 1, high + 1, "60"):
            try:
                jsonschema.validate(cluster({field: value}), schema)
            except jsonschema.ValidationError as error:
                assert field in error.json_path, error.json_path
            else:
                raise AssertionError(f"the CRD accepted spec.mqtt.{field}: {value!r}")
    for field in MQTT5_FEATURES:
        for value in (True, False):
            jsonschema.validate(cluster({field: value}), schema)
        for value in ("false", 0):
            try:
                jsonschema.validate(cluster({field: value}), schema)
            except jsonschema.ValidationError as error:
                assert field in error.json_path, error.json_path
            else:
                raise AssertionError(f"the CRD accepted spec.mqtt.{field}: {value!r}")


def expect_refused(values, why):
    try:
        render(values)
    except helm_python.HelmError as error:
        return str(error)
    raise AssertionError(f"values {values} were accepted: {why}")


def check_wrong_values_are_refused():
    message = expect_refused({"cluster": {"replicas": "three"}}, "replicas is an integer")
    assert "replicas" in message, message
    expect_refused({"cluster": {"service": {"type": "Bogus"}}}, "service.type is an enum")
    expect_refused({"cluster": {"replicas": 0}}, "at least one broker")
    expect_refused({"cluster": {"ports": {"mqtt": 70000}}}, "ports are at most 65535")
    expect_refused({"cluster": {"podAntiAffinity": "sometimes"}}, "soft or hard")
    expect_refused({"cluster": {"replicaz": 3}}, "unknown keys are typos")
    for field, low, high in MQTT5_LIMITS:
        for value in (low - 1, high + 1, "60", 1.5):
            message = expect_refused({"cluster": {"mqtt": {field: value}}},
                                     f"mqtt.{field} is an integer in {low}..{high}")
            assert field in message, message
    expect_refused({"cluster": {"mqtt": {"keepAlive": 60}}}, "unknown keys are typos")
    for field in MQTT5_FEATURES:
        for value in ("false", 0, 1):
            message = expect_refused({"cluster": {"mqtt": {field: value}}},
                                     f"mqtt.{field} is true or false")
            assert field in message, message
    for listener in ("tls", "websocketTls"):
        message = expect_refused({"cluster": {"listeners": {listener: {"enabled": True}}}},
                                 "a TLS listener needs a certificate")
        assert "cluster.tls.secretName" in message and "issuerRef" in message, message
    message = expect_refused({"cluster": {"listeners": {"mqtt": {"enabled": False}}}},
                             "at least one listener")
    assert "at least one listener" in message, message
    for verify in ("optional", "required"):
        message = expect_refused({"cluster": {"tls": {"secretName": "c",
                                                      "verifyClients": verify}}},
                                 "client verification needs a CA")
        assert "clientCASecretName" in message, message
    expect_refused({"cluster": {"listeners": {"tls": {"port": 0}}}}, "ports are 1..65535")
    for path in ("mqtt", "/mqtt?x=1", "/mqtt#a", "/a b"):
        expect_refused({"cluster": {"listeners": {"websocketPath": path}}},
                       "an absolute path without query, fragment or spaces (as -wsp)")
    expect_refused({"cluster": {"listeners": {"quic": {"enabled": True}}}}, "unknown listener")
    expect_refused({"cluster": {"tls": {"verifyClients": "always"}}}, "none/optional/required")
    expect_refused({"cluster": {"tls": {"usernameFromCertificate": "email"}}}, "off/cn/san")
    expect_refused({"cluster": {"tls": {"certManager": {"issuerRef": {"kind": ""}}}}},
                   "an issuer has a kind")
    expect_refused({"cluster": {"proxyProtocol": "yes"}}, "proxyProtocol is a boolean")
    message = expect_refused({"cluster": {"podDisruptionBudget": {"minAvailable": 1,
                                                                  "maxUnavailable": 2}}},
                             "minAvailable or maxUnavailable, not both")
    assert "not both" in message, message


def main():
    checks = [check_lint, check_defaults, check_rbac_matches_the_manifests, check_operator_only,
              check_cluster_only, check_cluster_scoped_names_carry_the_namespace,
              check_variations, check_wrong_values_are_refused,
              check_the_crd_bounds_the_mqtt5_limits, check_tls_is_off_by_default,
              check_listeners_and_tls_become_the_cluster_spec, check_cert_manager_certificate,
              check_the_crd_bounds_the_listeners_and_tls,
              check_auth_limits_and_coap_are_off_by_default, check_auth_becomes_the_cluster_spec,
              check_limits_and_coap_become_the_cluster_spec,
              check_wrong_auth_and_limit_values_are_refused,
              check_auth_and_limits_values_mirror_the_crd,
              check_the_crd_bounds_auth_limits_and_coap,
              check_forwarding_sizes_become_the_cluster_spec,
              check_wrong_forwarding_values_are_refused, check_forwarding_values_mirror_the_crd,
              check_drain_and_min_ready_seconds_become_the_cluster_spec,
              check_wrong_drain_values_are_refused, check_drain_values_mirror_the_crd,
              check_persistence_becomes_the_cluster_spec,
              check_wrong_persistence_values_are_refused,
              check_persistence_values_mirror_the_crd]
    for check in checks:
        check()
        print(f"ok {check.__name__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
