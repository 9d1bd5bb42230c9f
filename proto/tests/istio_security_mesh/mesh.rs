//! MeshConfig (with ProxyConfig as its `defaultConfig`): a realistic mesh
//! config as istio.io's install and observability docs write it, every
//! extension provider variant, and field-number spot checks for both files.

use super::*;

/// `defaultConfig` as the docs set it (DNS proxying, tracing, gateway
/// topology, stats inclusion, proxy headers), plus the rest of ProxyConfig.
fn default_config() -> Value {
    json!({
        "configPath": "./etc/istio/proxy",
        "binaryPath": "/usr/local/bin/envoy",
        "tracingServiceName": "CANONICAL_NAME_ONLY",
        "drainDuration": "45s",
        "discoveryAddress": "istiod.istio-system.svc:15012",
        "statsdUdpAddress": "10.75.241.127:9125",
        "proxyAdminPort": 15000,
        "controlPlaneAuthPolicy": "MUTUAL_TLS",
        "customConfigFile": "/etc/istio/custom-bootstrap.json",
        "statNameLength": 189,
        "concurrency": 2,
        "proxyBootstrapTemplatePath": "/var/lib/istio/envoy/envoy_bootstrap_tmpl.json",
        "interceptionMode": "TPROXY",
        "tracing": {
            "zipkin": {"address": "zipkin.istio-system:9411"},
            "customTags": {
                "my_tag": {"literal": {"value": "foo"}},
                "pod": {"environment": {"name": "POD_NAME", "defaultValue": "unknown"}},
                "user": {"header": {"name": "x-user", "defaultValue": "anonymous"}}
            },
            "maxPathTagLength": 256,
            "sampling": 10.0,
            "tlsSettings": {"mode": "ISTIO_MUTUAL"},
            "enableIstioTags": false
        },
        "envoyAccessLogService": {
            "address": "als.istio-system:15000",
            "tlsSettings": {
                "mode": "MUTUAL", "clientCertificate": "/etc/certs/cert.pem", "privateKey": "/etc/certs/key.pem",
                "caCertificates": "/etc/certs/root.pem", "credentialName": "als-credential",
                "subjectAltNames": ["als.istio-system"], "sni": "als.istio-system", "insecureSkipVerify": false,
                "caCrl": "/etc/certs/crl.pem"
            },
            "tcpKeepalive": {"probes": 3, "time": "10s", "interval": "5s"}
        },
        "envoyMetricsService": {"address": "metrics.istio-system:15000"},
        "proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true", "ISTIO_META_DNS_AUTO_ALLOCATE": "true"},
        "runtimeValues": {"envoy.reloadable_features.http_reject_path_with_fragment": "false"},
        "statusPort": 15020,
        "extraStatTags": ["request_host"],
        "gatewayTopology": {"numTrustedProxies": 2, "forwardClientCertDetails": "SANITIZE_SET", "proxyProtocol": {}},
        "terminationDrainDuration": "30s",
        "meshId": "mesh1",
        "readinessProbe": {
            "initialDelaySeconds": 5, "timeoutSeconds": 3, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3,
            "httpGet": {"path": "/ready", "port": 8080, "host": "127.0.0.1", "scheme": "HTTP", "httpHeaders": [{"name": "x-probe", "value": "1"}]}
        },
        "proxyStatsMatcher": {
            "inclusionPrefixes": ["cluster.outbound"],
            "inclusionSuffixes": ["upstream_rq_timeout"],
            "inclusionRegexps": [".*outlier_detection.*", ".*upstream_rq_retry.*", ".*upstream_cx_.*"]
        },
        "holdApplicationUntilProxyStarts": true,
        "caCertificatesPem": ["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"],
        "image": {"imageType": "distroless"},
        "privateKeyProvider": {"cryptomb": {"pollDelay": "0.010s", "fallback": true}},
        "proxyHeaders": {
            "forwardedClientCert": "SANITIZE",
            "server": {"value": "my-custom-server"},
            "requestId": {"disabled": false},
            "attemptCount": {"disabled": true},
            "envoyDebugHeaders": {"disabled": true},
            "metadataExchangeHeaders": {"mode": "IN_MESH"},
            "setCurrentClientCertDetails": {"subject": true, "cert": false, "chain": false, "dns": true, "uri": true},
            "preserveHttp1HeaderCase": true,
            "xForwardedHost": {"enabled": true},
            "xForwardedPort": {"enabled": true}
        },
        "fileFlushInterval": "1s",
        "fileFlushMinSizeKb": 64,
        "statsCompression": true
    })
}

/// One entry per provider variant of MeshConfig.ExtensionProvider.
fn extension_providers() -> Value {
    json!([
        {"name": "sample-ext-authz-http", "envoyExtAuthzHttp": {
            "service": "ext-authz.foo.svc.cluster.local", "port": 8000, "timeout": "2s", "pathPrefix": "/check",
            "failOpen": true, "clearRouteCache": true, "statusOnError": "503",
            "includeHeadersInCheck": ["x-legacy"], "includeRequestHeadersInCheck": ["x-ext-authz"],
            "includeAdditionalHeadersInCheck": {"x-ext-authz-additional-header": "value"},
            "includeRequestBodyInCheck": {"maxRequestBytes": 1024, "allowPartialMessage": true},
            "headersToUpstreamOnAllow": ["x-user"], "headersToDownstreamOnDeny": ["x-reason"], "headersToDownstreamOnAllow": ["set-cookie"]
        }},
        {"name": "sample-ext-authz-grpc", "envoyExtAuthzGrpc": {
            "service": "ext-authz.foo.svc.cluster.local", "port": 9000, "timeout": "1s", "failOpen": true,
            "clearRouteCache": true, "statusOnError": "403", "includeRequestBodyInCheck": {"maxRequestBytes": 4096, "packAsBytes": true}
        }},
        {"name": "prometheus", "prometheus": {}},
        {"name": "zipkin", "zipkin": {
            "service": "zipkin.istio-system.svc.cluster.local", "port": 9411, "maxTagLength": 256, "enable64bitTraceId": true,
            "path": "/api/v2/spans", "traceContextOption": "USE_B3_WITH_W3C_PROPAGATION", "timeout": "5s",
            "headers": [{"name": "x-tenant", "value": "team-a"}, {"name": "authorization", "envName": "ZIPKIN_TOKEN"}]
        }},
        {"name": "lightstep", "lightstep": {"service": "lightstep.example", "port": 8443, "accessToken": "token", "maxTagLength": 64}},
        {"name": "datadog", "datadog": {"service": "datadog-agent.datadog.svc.cluster.local", "port": 8126, "maxTagLength": 128}},
        {"name": "stackdriver", "stackdriver": {"maxTagLength": 256, "logging": {"labels": {"path": "request.url_path"}}}},
        {"name": "opencensus", "opencensus": {"service": "ocagent.default.svc.cluster.local", "port": 55678, "context": ["W3C_TRACE_CONTEXT", "B3"], "maxTagLength": 64}},
        {"name": "skywalking", "skywalking": {"service": "tracing.istio-system.svc.cluster.local", "port": 11800, "accessToken": "oap-token"}},
        {"name": "otel-tracing", "opentelemetry": {
            "service": "opentelemetry-collector.observability.svc.cluster.local", "port": 4317, "maxTagLength": 99,
            "grpc": {"timeout": "10s", "initialMetadata": [{"name": "Authentication", "value": "token-xxxxx"}]},
            "resourceDetectors": {"environment": {}},
            "serviceAttributeEnrichment": "OTEL_SEMANTIC_CONVENTIONS"
        }},
        {"name": "dynatrace", "opentelemetry": {
            "service": "abc12345.live.dynatrace.com", "port": 443,
            "http": {"path": "/api/v2/otlp/v1/traces", "timeout": "10s", "headers": [{"name": "Authorization", "value": "Api-Token dt0c01."}]},
            "resourceDetectors": {"dynatrace": {}},
            "dynatraceSampler": {"tenant": "abc12345", "clusterId": 1234, "rootSpansPerMinute": 2000,
                "httpService": {"service": "abc12345.live.dynatrace.com", "port": 443, "http": {"path": "/api/v2/samplingConfiguration", "timeout": "3s"}}}
        }},
        {"name": "envoy", "envoyFileAccessLog": {"path": "/dev/stdout", "logFormat": {"labels": {"status": "%RESPONSE_CODE%", "message": "%LOCAL_REPLY_BODY%"}}, "omitEmptyValues": true}},
        {"name": "envoy-text", "envoyFileAccessLog": {"path": "/dev/stderr", "logFormat": {"text": "%LOCAL_REPLY_BODY%:%RESPONSE_CODE%:path=%REQ(:path)%\n"}}},
        {"name": "http-als", "envoyHttpAls": {
            "service": "envoy-als.foo.svc.cluster.local", "port": 9000, "logName": "http_envoy_accesslog",
            "filterStateObjectsToLog": ["wasm.state"], "additionalRequestHeadersToLog": ["x-request-id"],
            "additionalResponseHeadersToLog": ["x-envoy-upstream-service-time"], "additionalResponseTrailersToLog": ["grpc-status"]
        }},
        {"name": "tcp-als", "envoyTcpAls": {"service": "envoy-als.foo.svc.cluster.local", "port": 9000, "logName": "tcp_envoy_accesslog", "filterStateObjectsToLog": ["wasm.state"]}},
        {"name": "otel-als", "envoyOtelAls": {
            "service": "opentelemetry-collector.observability.svc.cluster.local", "port": 4317, "logName": "otel_envoy_accesslog",
            "logFormat": {"text": "%LOCAL_REPLY_BODY%:%RESPONSE_CODE%", "labels": {"pod": "%ENVIRONMENT(POD_NAME)%"}}
        }},
        {"name": "vault", "sds": {"name": "vault", "service": "vault-sds.vault.svc.cluster.local", "port": 8080}}
    ])
}

fn mesh_config() -> Value {
    json!({
        "proxyListenPort": 15001,
        "proxyInboundListenPort": 15006,
        "proxyHttpPort": 15080,
        "connectTimeout": "10s",
        "hboneIdleTimeout": "15s",
        "protocolDetectionTimeout": "5s",
        "tcpKeepalive": {"probes": 9, "time": "7200s", "interval": "75s"},
        "ingressClass": "istio",
        "ingressService": "istio-ingressgateway",
        "ingressControllerMode": "STRICT",
        "ingressSelector": "ingressgateway",
        "enableTracing": true,
        "accessLogFile": "/dev/stdout",
        "accessLogFormat": "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\" %RESPONSE_CODE%\n",
        "accessLogEncoding": "JSON",
        "enableEnvoyAccessLogService": true,
        "disableEnvoyListenerLog": true,
        "defaultConfig": default_config(),
        "outboundTrafficPolicy": {"mode": "ALLOW_ANY"},
        "inboundTrafficPolicy": {"mode": "LOCALHOST"},
        "configSources": [{"address": "xds://mcp.istio-system:15010", "tlsSettings": {"mode": "ISTIO_MUTUAL"}, "subscribedResources": ["SERVICE_REGISTRY"]}],
        "enableAutoMtls": true,
        "trustDomain": "cluster.local",
        "trustDomainAliases": ["td2", "td3"],
        "caCertificates": [
            {"pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "certSigners": ["clusterissuers.cert-manager.io/ca-issuer"]},
            {"spiffeBundleUrl": "https://td2.example.com/bundle", "trustDomains": ["td2"]}
        ],
        "defaultServiceExportTo": ["*"],
        "defaultVirtualServiceExportTo": ["."],
        "defaultDestinationRuleExportTo": ["~"],
        "rootNamespace": "istio-system",
        "localityLbSetting": {"enabled": true, "failover": [{"from": "us-east", "to": "eu-west"}], "failoverPriority": ["topology.istio.io/network"]},
        "dnsRefreshRate": "60s",
        "h2UpgradePolicy": "UPGRADE",
        "inboundClusterStatName": "inbound|%SERVICE_PORT%|%SERVICE_PORT_NAME%|%SERVICE_FQDN%",
        "outboundClusterStatName": "%SERVICE%_%SERVICE_PORT%",
        "certificates": [{"secretName": "dns-cert", "dnsNames": ["istiod.istio-system.svc"]}],
        "serviceSettings": [{"settings": {"clusterLocal": true}, "hosts": ["*.foo.svc.cluster.local", "bar.baz.svc.cluster.local"]}],
        "serviceScopeConfigs": [{
            "namespaceSelector": {"matchExpressions": [{"key": "istio.io/global", "operator": "In", "values": ["true"]}]},
            "servicesSelector": {"matchExpressions": [{"key": "istio.io/global", "operator": "Exists"}]},
            "scope": "GLOBAL"
        }],
        "enablePrometheusMerge": true,
        "verifyCertificateAtClient": true,
        "ca": {"address": "custom-ca.default.svc.cluster.local:8932", "tlsSettings": {"mode": "SIMPLE", "caCertificates": "/etc/ca/root.pem"}, "requestTimeout": "10s", "istiodSide": true},
        "extensionProviders": extension_providers(),
        "defaultProviders": {"tracing": ["zipkin"], "metrics": ["prometheus"], "accessLogging": ["envoy"]},
        "discoverySelectors": [
            {"matchLabels": {"env": "prod", "region": "us-east1"}},
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["cassandra", "spark"]}]}
        ],
        "pathNormalization": {"normalization": "MERGE_SLASHES"},
        "defaultHttpRetryPolicy": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "gateway-error,connect-failure,refused-stream", "retryRemoteLocalities": true},
        "meshMTLS": {"minProtocolVersion": "TLSV1_3"},
        "tlsDefaults": {"ecdhCurves": ["P-256", "P-384"], "cipherSuites": ["ECDHE-ECDSA-AES256-GCM-SHA384"]}
    })
}

#[test]
fn mesh_config_from_the_docs_round_trips() {
    assert_round_trip(MESH_CONFIG, mesh_config());
    // A smaller one as the install docs show it, with a distribute policy
    // and the dynamic-DNS outbound mode (which carries its own TLS).
    assert_round_trip(
        MESH_CONFIG,
        json!({
            "accessLogFile": "/dev/stdout",
            "enableTracing": true,
            "defaultConfig": {"tracing": {"sampling": 100.0, "datadog": {"address": "$(HOST_IP):8126"}}, "holdApplicationUntilProxyStarts": true},
            "outboundTrafficPolicy": {"mode": "ALLOW_ANY_DYNAMIC_DNS", "tls": {"mode": "SIMPLE", "sni": "api.example.com"}},
            "localityLbSetting": {"distribute": [{"from": "us-west/zone1/*", "to": {"us-west/zone1/*": 80, "us-west/zone2/*": 20}}]},
            "extensionProviders": [{"name": "otel", "envoyOtelAls": {"service": "otel-collector.istio-system.svc.cluster.local", "port": 4317}}],
            "defaultProviders": {"accessLogging": ["otel"]}
        }),
    );
    // ProxyConfig's other tracers and oneof members.
    for tracing in [
        json!({"lightstep": {"address": "lightstep-satellite:8080", "accessToken": "t"}}),
        json!({"stackdriver": {"debug": true}}),
        json!({"openCensusAgent": {"address": "dns://ocagent:55678", "context": ["GRPC_BIN", "CLOUD_TRACE_CONTEXT"]}}),
    ] {
        assert_round_trip(PROXY_CONFIG, json!({"tracing": tracing}));
    }
    assert_round_trip(
        PROXY_CONFIG,
        json!({
            "serviceCluster": "istio-proxy",
            "privateKeyProvider": {"qat": {"pollDelay": "0.002s", "fallback": false}},
            "readinessProbe": {"tcpSocket": {"host": "localhost", "port": 3306}},
            "sds": {"enabled": true, "k8sSaJwtPath": "/var/run/secrets/tokens/istio-token"},
            "zipkinAddress": "zipkin:9411", "discoveryRefreshDelay": "1s", "availabilityZone": "us-east1-b", "envoyMetricsServiceAddress": "m:1"
        }),
    );
    assert_round_trip(PROXY_CONFIG, json!({"readinessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}}}));
}

#[test]
fn mesh_config_rejects_typos_unknown_enum_values_and_two_providers() {
    assert_rejected(MESH_CONFIG, json!({"accessLogFiles": "/dev/stdout"}), "accessLogFiles");
    assert_rejected(MESH_CONFIG, json!({"outboundTrafficPolicy": {"mode": "ALLOW_ALL"}}), "ALLOW_ALL");
    assert_rejected(MESH_CONFIG, json!({"extensionProviders": [{"name": "z", "zipkn": {}}]}), "zipkn");
    assert_rejected(MESH_CONFIG, json!({"defaultConfig": {"tracing": {"sampling": 1.0, "zipkn": {}}}}), "zipkn");
    assert_rejected(MESH_CONFIG, json!({"meshMTLS": {"minProtocolVersion": "TLSV1_4"}}), "TLSV1_4");
    // Every provider is a member of the one `provider` oneof.
    let providers = extension_providers();
    let variants: Vec<String> = providers
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p.as_object().unwrap().keys().filter(|k| *k != "name").cloned())
        .collect();
    for variant in &variants {
        let mut provider = json!({"name": "two", "prometheus": {}});
        provider[variant.as_str()] = json!({});
        let spec = json!({"extensionProviders": [provider]});
        if variant != "prometheus" {
            assert_rejected(MESH_CONFIG, spec, "oneof 'provider'");
        }
    }
    assert_eq!(variants.len(), 17, "one example per provider variant, two for opentelemetry and the file log");
}

#[test]
fn mesh_config_field_numbers() {
    let scope = w().msg(2, w().msg(2, w().str(1, "istio.io/global").str(2, "Exists"))).varint(3, 1);
    let sds = w().str(1, "vault").msg(16, w().str(1, "vault").str(2, "vault-sds.vault.svc").varint(3, 8080));
    let header = w().str(1, "authorization").str(3, "OTEL_TOKEN");
    let otel =
        w().str(1, "otel").msg(15, w().str(1, "otel.svc").varint(2, 4317).varint(8, 1).msg(7, w().msg(2, header)));
    let zipkin = w().str(1, "zipkin").msg(4, w().varint(4, 1).varint(6, 1).str(5, "/api/v2/spans"));
    let authz = w().str(1, "authz").msg(2, w().varint(14, 1).str(3, "/check").msg(11, entry("x-a", "1")));
    let wire = w()
        .msg(70, w().varint(1, 15))
        .msg(67, scope)
        .msg(63, w().varint(1, 2))
        .msg(57, sds)
        .msg(57, otel)
        .msg(57, zipkin)
        .msg(57, authz)
        .msg(17, w().varint(1, 3))
        .varint(65, 15006)
        .msg(62, w().varint(1, 3).str(3, "5xx"))
        .msg(60, w().str(3, "envoy"))
        .msg(58, w().str(2, "https://td2/bundle").str(4, "td2"));
    assert_wire(
        MESH_CONFIG,
        wire,
        json!({
            "outboundTrafficPolicy": {"mode": "ALLOW_ANY_DYNAMIC_DNS"},
            "caCertificates": [{"spiffeBundleUrl": "https://td2/bundle", "trustDomains": ["td2"]}],
            "extensionProviders": [
                {"name": "vault", "sds": {"name": "vault", "service": "vault-sds.vault.svc", "port": 8080}},
                {"name": "otel", "opentelemetry": {"service": "otel.svc", "port": 4317, "grpc": {"initialMetadata": [{"name": "authorization", "envName": "OTEL_TOKEN"}]}, "serviceAttributeEnrichment": "OTEL_SEMANTIC_CONVENTIONS"}},
                {"name": "zipkin", "zipkin": {"enable64bitTraceId": true, "path": "/api/v2/spans", "traceContextOption": "USE_B3_WITH_W3C_PROPAGATION"}},
                {"name": "authz", "envoyExtAuthzHttp": {"pathPrefix": "/check", "includeAdditionalHeadersInCheck": {"x-a": "1"}, "clearRouteCache": true}}
            ],
            "defaultProviders": {"accessLogging": ["envoy"]},
            "defaultHttpRetryPolicy": {"attempts": 3, "retryOn": "5xx"},
            "meshMTLS": {"minProtocolVersion": "TLSV1_3"},
            "proxyInboundListenPort": 15006,
            "serviceScopeConfigs": [{"servicesSelector": {"matchExpressions": [{"key": "istio.io/global", "operator": "Exists"}]}, "scope": "GLOBAL"}],
            "hboneIdleTimeout": "15s"
        }),
    );
}

#[test]
fn proxy_config_field_numbers() {
    let headers = w().msg(42, w().msg(1, w().varint(1, 1))).msg(7, w().msg(5, w().varint(1, 1))).varint(1, 5);
    let wire = w()
        .varint(36, 2)
        .msg(37, entry("envoy.feature", "true"))
        .msg(38, w().msg(3, w().msg(1, w().varint(1, 1))))
        .msg(39, headers)
        .varint(41, 64)
        .msg(42, w())
        .varint(13, 1)
        .msg(28, w().varint(1, 2).msg(3, w()))
        .msg(19, w().msg(9, w().str(1, "oc:55678")).msg(10, w()))
        .msg(35, w().str(1, "distroless"))
        .msg(31, w().varint(6, 3).msg(8, w().varint(2, 3306)));
    assert_wire(
        PROXY_CONFIG,
        wire,
        json!({
            "tracingServiceName": "CANONICAL_NAME_AND_NAMESPACE",
            "controlPlaneAuthPolicy": "MUTUAL_TLS",
            "tracing": {"openCensusAgent": {"address": "oc:55678"}, "enableIstioTags": false},
            "runtimeValues": {"envoy.feature": "true"},
            "gatewayTopology": {"numTrustedProxies": 2, "proxyProtocol": {}},
            "readinessProbe": {"failureThreshold": 3, "tcpSocket": {"port": 3306}},
            "image": {"imageType": "distroless"},
            "privateKeyProvider": {"qat": {"pollDelay": "1s"}},
            "proxyHeaders": {"forwardedClientCert": "ALWAYS_FORWARD_ONLY", "setCurrentClientCertDetails": {"uri": true}, "xForwardedPort": {"enabled": true}},
            "fileFlushMinSizeKb": 64,
            "statsCompression": false
        }),
    );
}
