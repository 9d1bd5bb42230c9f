//! `spec:` bodies of Istio networking objects, as users write them, taken from
//! the examples in istio.io's reference pages and filled out so that every
//! nested message type is reached. Two deliberate departures from the YAML a
//! user would write:
//! * durations are in proto3 JSON's seconds form (`"86400s"`, `"0.030s"`),
//!   the only form `google.protobuf.Duration` accepts in JSON;
//! * numbers inside `google.protobuf.Struct` (EnvoyFilter patch values) are
//!   written as floats, since a Struct holds every number as a double and
//!   serializes it back as one.

use serde_json::{Value, json};

pub fn virtual_service_reviews() -> Value {
    json!({
        "hosts": ["reviews.prod.svc.cluster.local"],
        "http": [
            {
                "name": "reviews-v2-routes",
                "match": [{"uri": {"prefix": "/wpcatalog"}}, {"uri": {"prefix": "/consumercatalog"}}],
                "rewrite": {"uri": "/newcatalog"},
                "route": [{"destination": {"host": "reviews.prod.svc.cluster.local", "subset": "v2"}}]
            },
            {
                "name": "reviews-v1-route",
                "route": [{"destination": {"host": "reviews.prod.svc.cluster.local", "subset": "v1"}}]
            }
        ]
    })
}

pub fn virtual_service_full() -> Value {
    json!({
        "hosts": ["reviews.prod.svc.cluster.local", "uk.bookinfo.com"],
        "gateways": ["some-config-namespace/my-gateway", "mesh"],
        "exportTo": ["."],
        "http": [
            {
                "name": "jason",
                "match": [{
                    "name": "end-user",
                    "headers": {"end-user": {"exact": "jason"}, "x-canary": {}},
                    "uri": {"prefix": "/ratings/v2/"},
                    "ignoreUriCase": true,
                    "scheme": {"exact": "https"},
                    "method": {"exact": "GET"},
                    "authority": {"regex": "^uk\\..*"},
                    "port": 9080,
                    "sourceLabels": {"env": "prod"},
                    "gateways": ["mesh"],
                    "queryParams": {"debug": {"exact": "true"}},
                    "withoutHeaders": {"x-skip": {"prefix": "yes"}},
                    "sourceNamespace": "bookinfo",
                    "statPrefix": "ratings-v2"
                }],
                "route": [
                    {
                        "destination": {"host": "reviews.prod.svc.cluster.local", "subset": "v2", "port": {"number": 9080}},
                        "weight": 25,
                        "headers": {"response": {"remove": ["foo"]}}
                    },
                    {"destination": {"host": "reviews.prod.svc.cluster.local", "subset": "v1"}, "weight": 75}
                ],
                "headers": {"request": {"set": {"test": "true"}, "add": {"x-trace": "1"}}},
                "timeout": "5s",
                "retries": {
                    "attempts": 3,
                    "perTryTimeout": "2s",
                    "retryOn": "gateway-error,connect-failure,refused-stream",
                    "retryRemoteLocalities": true
                },
                "fault": {
                    "delay": {"percentage": {"value": 0.1}, "fixedDelay": "5s"},
                    "abort": {"percentage": {"value": 0.1}, "httpStatus": 400}
                },
                "mirror": {"host": "httpbin", "subset": "v2"},
                "mirrorPercentage": {"value": 50.0},
                "corsPolicy": {
                    "allowOrigins": [{"exact": "https://example.com"}, {"regex": "https://.*\\.example\\.org"}],
                    "allowMethods": ["POST", "GET"],
                    "allowCredentials": false,
                    "allowHeaders": ["X-Foo-Bar"],
                    "exposeHeaders": ["X-Expose"],
                    "maxAge": "86400s",
                    "unmatchedPreflights": "IGNORE"
                }
            },
            {
                "match": [{"uri": {"prefix": "/grpc"}}],
                "route": [{"destination": {"host": "ratings.prod.svc.cluster.local"}}],
                "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 10.0}}},
                "mirrors": [
                    {"destination": {"host": "httpbin", "subset": "v2"}, "percentage": {"value": 5.0}},
                    {"destination": {"host": "httpbin-shadow"}}
                ],
                "mirrorPercent": 20
            },
            {
                "match": [{"uri": {"exact": "/v1/getProductRatings"}}],
                "redirect": {
                    "uri": "/v1/bookRatings",
                    "authority": "newratings.default.svc.cluster.local",
                    "derivePort": "FROM_REQUEST_PORT",
                    "scheme": "https",
                    "redirectCode": 308
                }
            },
            {
                "match": [{"uri": {"exact": "/old"}}],
                "redirect": {"uri": "/new", "port": 8443}
            },
            {
                "match": [{"uri": {"exact": "/v1/unavailable"}}],
                "directResponse": {"status": 503, "body": {"string": "{\"error\": \"unknown error\"}"}},
                "headers": {"response": {"set": {"content-type": "application/json"}}}
            },
            {
                "match": [{"uri": {"exact": "/v1/binary"}}],
                "directResponse": {"status": 503, "body": {"bytes": "dW5rbm93biBlcnJvcg=="}}
            },
            {
                "match": [{"uri": {"prefix": "/productpage"}}],
                "delegate": {"name": "productpage", "namespace": "nsA"}
            },
            {
                "match": [{"uri": {"prefix": "/service"}}],
                "rewrite": {
                    "authority": "svc.internal",
                    "uriRegexRewrite": {"match": "^/service/([^/]+)(/.*)$", "rewrite": "/customprefix/\\2/\\1"}
                },
                "route": [{"destination": {"host": "svc.prod.svc.cluster.local"}}]
            }
        ],
        "tls": [{
            "match": [{
                "port": 443,
                "sniHosts": ["login.bookinfo.com"],
                "destinationSubnets": ["10.0.0.0/16"],
                "sourceLabels": {"app": "web"},
                "gateways": ["mygateway"],
                "sourceNamespace": "frontend"
            }],
            "route": [{"destination": {"host": "login.prod.svc.cluster.local"}, "weight": 100}]
        }],
        "tcp": [{
            "match": [{
                "port": 27017,
                "destinationSubnets": ["10.1.0.0/16"],
                "sourceSubnet": "10.2.0.0/16",
                "sourceLabels": {"app": "db-client"},
                "gateways": ["mesh"],
                "sourceNamespace": "apps"
            }],
            "route": [{"destination": {"host": "mongo.backup.svc.cluster.local", "port": {"number": 5555}}}]
        }]
    })
}

pub fn destination_rule_subsets() -> Value {
    json!({
        "host": "ratings.prod.svc.cluster.local",
        "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}},
        "subsets": [{
            "name": "testversion",
            "labels": {"version": "v3"},
            "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}
        }]
    })
}

/// Returns the input and, separately, what serializing it yields: uint64
/// fields (ring and Maglev table sizes) come back as JSON strings.
pub fn destination_rule_full() -> (Value, Value) {
    let write = |ring: Value, table: Value| {
        json!({
            "host": "reviews.prod.svc.cluster.local",
            "exportTo": [".", "istio-system"],
            "workloadSelector": {"matchLabels": {"app": "ratings"}},
            "trafficPolicy": {
                "loadBalancer": {
                    "consistentHash": {
                        "httpCookie": {"name": "user", "path": "/", "ttl": "0s"},
                        "ringHash": {"minimumRingSize": ring}
                    },
                    "localityLbSetting": {
                        "enabled": true,
                        "distribute": [{"from": "us-west/zone1/*", "to": {"us-west/zone1/*": 80, "us-west/zone2/*": 20}}]
                    },
                    "warmupDurationSecs": "100s"
                },
                "connectionPool": {
                    "tcp": {
                        "maxConnections": 100,
                        "connectTimeout": "0.030s",
                        "tcpKeepalive": {"probes": 9, "time": "7200s", "interval": "75s"},
                        "maxConnectionDuration": "3600s",
                        "idleTimeout": "600s"
                    },
                    "http": {
                        "http1MaxPendingRequests": 1024,
                        "http2MaxRequests": 1000,
                        "maxRequestsPerConnection": 10,
                        "maxRetries": 3,
                        "idleTimeout": "300s",
                        "h2UpgradePolicy": "UPGRADE",
                        "useClientProtocol": true,
                        "maxConcurrentStreams": 100
                    }
                },
                "outlierDetection": {
                    "consecutive5xxErrors": 7,
                    "consecutiveGatewayErrors": 5,
                    "splitExternalLocalOriginErrors": true,
                    "consecutiveLocalOriginFailures": 3,
                    "interval": "300s",
                    "baseEjectionTime": "900s",
                    "maxEjectionPercent": 50,
                    "minHealthPercent": 10
                },
                "tls": {
                    "mode": "MUTUAL",
                    "clientCertificate": "/etc/certs/myclientcert.pem",
                    "privateKey": "/etc/certs/client_private_key.pem",
                    "caCertificates": "/etc/certs/rootcacerts.pem",
                    "caCrl": "/etc/certs/crl.pem",
                    "subjectAltNames": ["spiffe://cluster.local/ns/db/sa/db"],
                    "sni": "my-nginx.mesh-external.svc.cluster.local",
                    "insecureSkipVerify": false
                },
                "portLevelSettings": [{
                    "port": {"number": 31443},
                    "loadBalancer": {"simple": "LEAST_REQUEST"},
                    "connectionPool": {"tcp": {"maxConnections": 10}},
                    "outlierDetection": {"consecutive5xxErrors": 3},
                    "tls": {"mode": "SIMPLE", "credentialName": "client-credential"}
                }],
                "tunnel": {"protocol": "CONNECT", "targetHost": "192.168.1.2", "targetPort": 8443},
                "proxyProtocol": {"version": "V2"}
            },
            "subsets": [
                {
                    "name": "maglev",
                    "labels": {"version": "v1"},
                    "trafficPolicy": {"loadBalancer": {
                        "consistentHash": {"httpHeaderName": "x-user", "maglev": {"tableSize": table}},
                        "localityLbSetting": {
                            "failover": [{"from": "us-east", "to": "eu-west"}],
                            "failoverPriority": ["topology.istio.io/network", "topology.kubernetes.io/region"]
                        }
                    }}
                },
                {
                    "name": "source-ip",
                    "trafficPolicy": {
                        "loadBalancer": {"consistentHash": {"useSourceIp": true}},
                        "tls": {"mode": "ISTIO_MUTUAL"}
                    }
                },
                {
                    "name": "query",
                    "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpQueryParameterName": "user"}}}
                }
            ]
        })
    };
    (write(json!(1024), json!(65537)), write(json!("1024"), json!("65537")))
}

pub fn gateway_full() -> Value {
    json!({
        "selector": {"app": "my-gateway-controller"},
        "servers": [
            {
                "port": {"number": 80, "name": "http", "protocol": "HTTP"},
                "hosts": ["uk.bookinfo.com", "eu.bookinfo.com"],
                "tls": {"httpsRedirect": true}
            },
            {
                "port": {"number": 443, "name": "https-443", "protocol": "HTTPS"},
                "hosts": ["uk.bookinfo.com", "eu.bookinfo.com"],
                "tls": {
                    "mode": "SIMPLE",
                    "serverCertificate": "/etc/certs/servercert.pem",
                    "privateKey": "/etc/certs/privatekey.pem"
                }
            },
            {
                "port": {"number": 9443, "name": "https-9443", "protocol": "HTTPS"},
                "hosts": ["bookinfo-namespace/*.bookinfo.com"],
                "tls": {"mode": "SIMPLE", "credentialName": "bookinfo-secret"}
            },
            {
                "port": {"number": 8443, "name": "https-mtls", "protocol": "HTTPS"},
                "hosts": ["*"],
                "name": "mtls-server",
                "bind": "0.0.0.0",
                "defaultEndpoint": "127.0.0.1:8080",
                "tls": {
                    "mode": "MUTUAL",
                    "serverCertificate": "/etc/certs/server.pem",
                    "privateKey": "/etc/certs/key.pem",
                    "caCertificates": "/etc/certs/ca.pem",
                    "caCrl": "/etc/certs/crl.pem",
                    "subjectAltNames": ["client.example.com"],
                    "verifyCertificateSpki": ["Yt4cZ4+u0zx9Hk2i8oxyHY3bPTnn9rKD4h2g8Z8m6cI="],
                    "verifyCertificateHash": ["DF:6F:1E:08:49:4A:5C:65:D5:0F"],
                    "minProtocolVersion": "TLSV1_2",
                    "maxProtocolVersion": "TLSV1_3",
                    "cipherSuites": ["ECDHE-ECDSA-AES256-GCM-SHA384"]
                }
            },
            {
                "port": {"number": 15443, "name": "tls", "protocol": "TLS"},
                "hosts": ["*.local"],
                "tls": {"mode": "AUTO_PASSTHROUGH"}
            },
            {
                "port": {"number": 9444, "name": "https-optional", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {"mode": "OPTIONAL_MUTUAL", "credentialName": "optional-cred"}
            },
            {
                "port": {"number": 2379, "name": "mongo", "protocol": "MONGO"},
                "hosts": ["*"]
            }
        ]
    })
}

/// `MESH_EXTERNAL` is location's zero value, so it is not serialized back.
pub fn service_entry_https() -> (Value, Value) {
    let mut input = json!({
        "hosts": ["api.dropboxapi.com", "www.googleapis.com", "api.facebook.com"],
        "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
        "resolution": "DNS"
    });
    let expected = input.clone();
    input["location"] = json!("MESH_EXTERNAL");
    (input, expected)
}

pub fn service_entry_full() -> Value {
    json!({
        "hosts": ["mymongodb.somedomain", "foo.bar.com"],
        "addresses": ["192.192.192.192/24"],
        "ports": [
            {"number": 27018, "name": "mongodb", "protocol": "MONGO"},
            {"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}
        ],
        "location": "MESH_INTERNAL",
        "resolution": "STATIC",
        "endpoints": [
            {"address": "2.2.2.2"},
            {
                "address": "us.foo.bar.com",
                "ports": {"http": 8080},
                "labels": {"app": "details", "instance-id": "vm1"},
                "network": "vpc-1",
                "locality": "us-central1/us-central1-a",
                "weight": 3,
                "serviceAccount": "details"
            }
        ],
        "exportTo": ["."],
        "subjectAltNames": ["spiffe://cluster.local/ns/httpbin-ns/sa/httpbin-service-account"]
    })
}

pub fn service_entry_selector() -> Value {
    json!({
        "hosts": ["details.bookinfo.com"],
        "location": "MESH_INTERNAL",
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
        "resolution": "DNS_ROUND_ROBIN",
        "workloadSelector": {"labels": {"app": "details"}}
    })
}

pub fn sidecar_full() -> Value {
    json!({
        "workloadSelector": {"labels": {"app": "productpage"}},
        "inboundConnectionPool": {
            "http": {"http1MaxPendingRequests": 1024, "http2MaxRequests": 1024, "maxRequestsPerConnection": 1024, "maxRetries": 100}
        },
        "ingress": [
            {
                "port": {"number": 9080, "protocol": "HTTP", "name": "somename"},
                "defaultEndpoint": "127.0.0.1:8080",
                "captureMode": "NONE",
                "connectionPool": {"http": {"http2MaxRequests": 1024}, "tcp": {"maxConnections": 100}}
            },
            {
                "bind": "172.16.1.32",
                "port": {"number": 443, "protocol": "HTTPS", "name": "external"},
                "defaultEndpoint": "127.0.0.1:8443",
                "tls": {
                    "mode": "SIMPLE",
                    "privateKey": "/etc/istio/certs/key.pem",
                    "serverCertificate": "/etc/istio/certs/cert.pem"
                }
            }
        ],
        "egress": [
            {
                "port": {"number": 3306, "protocol": "MYSQL", "name": "egressmysql"},
                "captureMode": "NONE",
                "bind": "127.0.0.1",
                "hosts": ["*/mysql.foo.com"]
            },
            {"captureMode": "IPTABLES", "hosts": ["istio-system/*", "./*"]}
        ],
        "outboundTrafficPolicy": {
            "mode": "ALLOW_ANY",
            "egressProxy": {"host": "egress.istio-system.svc.cluster.local", "subset": "v1", "port": {"number": 80}}
        }
    })
}

pub fn workload_entry_full() -> Value {
    json!({
        "serviceAccount": "details",
        "address": "2.2.2.2",
        "labels": {"app": "details", "instance-id": "vm1"},
        "ports": {"http": 8080, "grpc": 3550},
        "network": "vm-network",
        "locality": "us-east1/us-east1-b",
        "weight": 10
    })
}

pub fn workload_group_http_probe() -> Value {
    json!({
        "metadata": {
            "labels": {"app.kubernetes.io/name": "reviews", "app.kubernetes.io/version": "1.3.4"},
            "annotations": {"owner": "team-a"}
        },
        "template": {"ports": {"grpc": 3550, "http": 8080}, "serviceAccount": "default"},
        "probe": {
            "initialDelaySeconds": 5,
            "timeoutSeconds": 3,
            "periodSeconds": 4,
            "successThreshold": 3,
            "failureThreshold": 3,
            "httpGet": {
                "path": "/foo/bar",
                "host": "127.0.0.1",
                "port": 3100,
                "scheme": "HTTPS",
                "httpHeaders": [{"name": "Lit-Header", "value": "Im-The-Best"}]
            }
        }
    })
}

pub fn workload_group_other_probes() -> [Value; 2] {
    [
        json!({"template": {"serviceAccount": "db"}, "probe": {"tcpSocket": {"host": "127.0.0.1", "port": 3306}}}),
        json!({"template": {"network": "vm-net"}, "probe": {"periodSeconds": 10, "exec": {"command": ["cat", "/tmp/healthy"]}}}),
    ]
}

pub fn envoy_filter_selector() -> Value {
    json!({
        "workloadSelector": {"labels": {"app": "reviews"}},
        "priority": -10,
        "configPatches": [
            {
                "applyTo": "HTTP_FILTER",
                "match": {
                    "context": "SIDECAR_INBOUND",
                    "proxy": {"proxyVersion": "^1\\.2.*", "metadata": {"ISTIO_META_ROLE": "app"}},
                    "listener": {
                        "portNumber": 8080,
                        "name": "virtualInbound",
                        "filterChain": {
                            "name": "inbound-http",
                            "sni": "app.example.com",
                            "transportProtocol": "tls",
                            "applicationProtocols": "h2,http/1.1",
                            "destinationPort": 8080,
                            "filter": {
                                "name": "envoy.filters.network.http_connection_manager",
                                "subFilter": {"name": "envoy.filters.http.router"}
                            }
                        }
                    }
                },
                "patch": {
                    "operation": "INSERT_BEFORE",
                    "value": {
                        "name": "envoy.filters.http.lua",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                            "defaultSourceCode": {"inlineString": "function envoy_on_request(h) end"}
                        }
                    }
                }
            },
            {
                "applyTo": "CLUSTER",
                "match": {
                    "context": "SIDECAR_OUTBOUND",
                    "cluster": {"portNumber": 8888, "service": "internal.org.net", "subset": "v1", "name": "lua_cluster"}
                },
                "patch": {
                    "operation": "MERGE",
                    "value": {"connect_timeout": "0.5s", "lb_policy": "ROUND_ROBIN", "per_connection_buffer_limit_bytes": 32768.0}
                }
            },
            {
                "applyTo": "HTTP_ROUTE",
                "match": {
                    "context": "GATEWAY",
                    "routeConfiguration": {
                        "portNumber": 443,
                        "portName": "https",
                        "gateway": "istio-system/my-gateway",
                        "name": "https.443.https.my-gateway.istio-system",
                        "vhost": {"name": "app.example.com:443", "route": {"name": "default", "action": "ROUTE"}}
                    }
                },
                "patch": {"operation": "MERGE", "value": {"route": {"idle_timeout": "30s"}}}
            }
        ]
    })
}

pub fn envoy_filter_target_refs() -> Value {
    json!({
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}],
        "configPatches": [
            {
                "applyTo": "LISTENER_FILTER",
                "match": {"context": "SIDECAR_INBOUND", "listener": {"portNumber": 15006, "listenerFilter": "envoy.filters.listener.tls_inspector"}},
                "patch": {
                    "operation": "INSERT_BEFORE",
                    "value": {
                        "name": "envoy.filters.listener.proxy_protocol",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"}
                    }
                }
            },
            {
                "applyTo": "HTTP_FILTER",
                "match": {"context": "SIDECAR_INBOUND"},
                "patch": {
                    "operation": "ADD",
                    "filterClass": "AUTHZ",
                    "value": {"name": "envoy.filters.http.ext_authz", "typed_config": {"grpc_service": {"timeout": "2s"}}}
                }
            },
            {"applyTo": "NETWORK_FILTER", "patch": {"operation": "REMOVE"}},
            {"applyTo": "HTTP_FILTER", "patch": {"operation": "INSERT_FIRST", "filterClass": "STATS"}},
            {"applyTo": "EXTENSION_CONFIG", "patch": {"operation": "REPLACE", "filterClass": "AUTHN", "value": {"name": "my-wasm-extension"}}}
        ]
    })
}

pub fn proxy_config_selector() -> Value {
    json!({
        "selector": {"matchLabels": {"app": "ratings"}},
        "concurrency": 0,
        "image": {"imageType": "debug"},
        "environmentVariables": {"ISTIO_META_DNS_CAPTURE": "true"}
    })
}

pub fn proxy_config_waypoint() -> Value {
    // istio.io's example shows targetRef as a list; the field is a single
    // message, so a list is rejected (see the rejection test).
    json!({
        "concurrency": 2,
        "targetRef": {"kind": "Gateway", "name": "waypoint", "group": "gateway.networking.k8s.io"}
    })
}
