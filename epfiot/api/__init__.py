"""The API of the service (`epfiot watch`): one aiohttp application, served on a Unix socket (the caller is
the peer's uid) and, when asked, over HTTP (the caller is a bearer token's tenant).

    app       build_app (the application; extra routes, for the web console) and ApiServer (the listeners)
    auth      who is asking (peer credentials, tokens, the host configuration) and the HTTP rate limit
    routes    GET endpoints, /metrics, /healthz, /readyz; openapi.json describes them all
    changes   POST plan, apply, delete: commands (the CLI's own code, run for the caller on the live host)
    ops       the reads, as `-o json` gives them (from an observation), scoped by epfiot.authz
    backend   watch's latest snapshot of the host for reads (reader threads), the live host for changes
              (watch's worker thread)
    metrics   the Prometheus registry of the service
    client    the CLI's side of the Unix socket
"""
