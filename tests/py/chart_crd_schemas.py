"""Structural schemas for the custom resources the chart renders.

kubernetes-validate only knows the built-in Kubernetes kinds. The chart also renders
cert-manager objects (Issuer, Certificate; cert-manager.io/v1) and CSI snapshot classes
(VolumeSnapshotClass; VolumeGroupSnapshotClass). These schemas are written from the fields
those projects document for their CRDs (cert-manager v1 API reference; the external-snapshotter
CRDs, where VolumeGroupSnapshotClass has the same shape in v1beta1, v1beta2 and v1). They are
strict: an unknown or misspelt field fails, as it would against the real CRD's structural
schema (which prunes or rejects unknown fields).
"""

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
GO_DURATION = r"^([0-9]+(\.[0-9]+)?(h|m|s|ms|us|ns))+$"

STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def _metadata(namespaced: bool) -> dict:
    props = {
        "name": {"type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    }
    required = ["name"]
    if namespaced:
        props["namespace"] = {"type": "string", "pattern": DNS_LABEL, "maxLength": 63}
        required.append("namespace")
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def _resource(api_versions, kind, namespaced, spec=None, top=None, required_top=()):
    props = {
        "apiVersion": {"enum": list(api_versions)},
        "kind": {"const": kind},
        "metadata": _metadata(namespaced),
    }
    required = ["apiVersion", "kind", "metadata", *required_top]
    if spec is not None:
        props["spec"] = spec
        required.append("spec")
    props.update(top or {})
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


ISSUER_REF = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1}, "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                   "group": {"type": "string"}},
    "required": ["name"],
    "additionalProperties": False,
}

KEY_USAGES = [
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
]

ISSUER_SPEC = {
    "type": "object",
    "properties": {
        "selfSigned": {"type": "object", "properties": {"crlDistributionPoints": {"type": "array"}},
                       "additionalProperties": False},
        "ca": {"type": "object",
               "properties": {"secretName": {"type": "string", "minLength": 1},
                              "crlDistributionPoints": {"type": "array"}, "ocspServers": {"type": "array"},
                              "issuingCertificateURLs": {"type": "array"}},
               "required": ["secretName"], "additionalProperties": False},
        "acme": {"type": "object"},
        "vault": {"type": "object"},
        "venafi": {"type": "object"},
    },
    # exactly one issuer type
    "minProperties": 1,
    "maxProperties": 1,
    "additionalProperties": False,
}

CERTIFICATE_SPEC = {
    "type": "object",
    "properties": {
        "secretName": {"type": "string", "pattern": DNS_SUBDOMAIN},
        "issuerRef": ISSUER_REF,
        "commonName": {"type": "string", "maxLength": 64},
        "dnsNames": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "ipAddresses": {"type": "array", "items": {"type": "string"}},
        "uris": {"type": "array", "items": {"type": "string"}},
        "emailAddresses": {"type": "array", "items": {"type": "string"}},
        "duration": {"type": "string", "pattern": GO_DURATION},
        "renewBefore": {"type": "string", "pattern": GO_DURATION},
        "renewBeforePercentage": {"type": "integer"},
        "isCA": {"type": "boolean"},
        "usages": {"type": "array", "items": {"enum": KEY_USAGES}},
        "privateKey": {
            "type": "object",
            "properties": {
                "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                "size": {"type": "integer"},
                "encoding": {"enum": ["PKCS1", "PKCS8"]},
                "rotationPolicy": {"enum": ["Never", "Always"]},
            },
            "additionalProperties": False,
        },
        "subject": {"type": "object"},
        "literalSubject": {"type": "string"},
        "secretTemplate": {"type": "object",
                           "properties": {"labels": STRING_MAP, "annotations": STRING_MAP},
                           "additionalProperties": False},
        "keystores": {"type": "object"},
        "revisionHistoryLimit": {"type": "integer", "minimum": 1},
        "additionalOutputFormats": {"type": "array"},
        "encodeUsagesInRequest": {"type": "boolean"},
        "nameConstraints": {"type": "object"},
        "otherNames": {"type": "array"},
    },
    "required": ["secretName", "issuerRef"],
    "additionalProperties": False,
}

SNAPSHOT_CLASS_TOP = {
    "driver": {"type": "string", "pattern": r"^[a-zA-Z][A-Za-z0-9-._]{0,61}[a-zA-Z]$"},
    "deletionPolicy": {"enum": ["Delete", "Retain"]},
    "parameters": STRING_MAP,
}

SCHEMAS = {
    ("cert-manager.io/v1", "Issuer"): _resource(["cert-manager.io/v1"], "Issuer", True, ISSUER_SPEC),
    ("cert-manager.io/v1", "Certificate"): _resource(["cert-manager.io/v1"], "Certificate", True, CERTIFICATE_SPEC),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"): _resource(
        ["snapshot.storage.k8s.io/v1"], "VolumeSnapshotClass", False, None, SNAPSHOT_CLASS_TOP,
        ("driver", "deletionPolicy")),
}
for _version in ("v1", "v1beta2", "v1beta1"):
    _api = f"groupsnapshot.storage.k8s.io/{_version}"
    SCHEMAS[(_api, "VolumeGroupSnapshotClass")] = _resource(
        [_api], "VolumeGroupSnapshotClass", False, None, SNAPSHOT_CLASS_TOP, ("driver", "deletionPolicy"))

# Prometheus Operator (monitoring.coreos.com/v1), written from its API reference for the fields
# the chart uses; the rest of each spec is allowed as documented but not modelled field by field.
LABEL_SELECTOR = {"type": "object", "properties": {"matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}},
                  "additionalProperties": False}
PROM_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
SERVICE_MONITOR_SPEC = {
    "type": "object",
    "properties": {
        "selector": LABEL_SELECTOR,
        "namespaceSelector": {"type": "object", "properties": {"any": {"type": "boolean"},
                                                               "matchNames": {"type": "array", "items": {"type": "string"}}},
                              "additionalProperties": False},
        "jobLabel": {"type": "string"},
        "endpoints": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "properties": {"port": {"type": "string", "minLength": 1}, "path": {"type": "string", "pattern": "^/"},
                           "scheme": {"enum": ["http", "https"]},
                           "interval": {"type": "string", "pattern": PROM_DURATION},
                           "scrapeTimeout": {"type": "string", "pattern": PROM_DURATION},
                           "honorLabels": {"type": "boolean"}, "tlsConfig": {"type": "object"},
                           "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}},
            "additionalProperties": False}},
    },
    "required": ["selector"],
    "additionalProperties": False,
}
RULE = {"type": "object",
        "properties": {"alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                       "record": {"type": "string"},
                       "expr": {"type": "string", "minLength": 1},
                       "for": {"type": "string", "pattern": PROM_DURATION},
                       "keep_firing_for": {"type": "string", "pattern": PROM_DURATION},
                       "labels": STRING_MAP, "annotations": STRING_MAP},
        "required": ["expr"], "additionalProperties": False}
PROMETHEUS_RULE_SPEC = {
    "type": "object",
    "properties": {"groups": {"type": "array", "items": {
        "type": "object",
        "properties": {"name": {"type": "string", "minLength": 1}, "interval": {"type": "string", "pattern": PROM_DURATION},
                       "rules": {"type": "array", "items": RULE}},
        "required": ["name", "rules"], "additionalProperties": False}}},
    "additionalProperties": False,
}
SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")] = _resource(
    ["monitoring.coreos.com/v1"], "ServiceMonitor", True, SERVICE_MONITOR_SPEC)
SCHEMAS[("monitoring.coreos.com/v1", "PrometheusRule")] = _resource(
    ["monitoring.coreos.com/v1"], "PrometheusRule", True, PROMETHEUS_RULE_SPEC)
