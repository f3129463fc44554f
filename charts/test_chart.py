#!/usr/bin/env python3
"""Checks charts/coolpy7 offline: lints it strictly and renders it with the Helm engine
(PyPI helm-python-sdk), validates every rendered object strictly against the Kubernetes
schemas (PyPI kubernetes-validate) and the Coolpy7Cluster against the chart's own CRD, and
checks the fields that matter for several sets of values. Run by `cargo test` through
operator/tests/chart.rs; exits non-zero on the first failure, saying which."""

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
              check_the_crd_bounds_the_listeners_and_tls]
    for check in checks:
        check()
        print(f"ok {check.__name__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
