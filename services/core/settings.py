"""Settings from the environment. Read once by each entry point, passed down explicitly."""

from __future__ import annotations

import os

import msgspec


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/chat"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every Redis key this deployment writes starts with this (tests use one per run).
    redis_prefix: str = "chat:"
    # A Redis Cluster for live replies, leases, stop flags and the analytics stream
    # (comma-separated startup nodes, `redis://host:port,...`; empty = REDIS_URL):
    # services/core/redisconn.py. The Dramatiq broker stays on REDIS_URL or BROKER_URL.
    redis_cluster_urls: str = ""
    # The Dramatiq broker: empty = the Redis broker on redis_url; `amqp://user:pass@host/vhost`
    # = RabbitMQ (production); workers/broker.py.
    broker_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    command_port: int = 8001
    query_port: int = 8002
    # Where the gateway finds the services (default: loopback on the ports above).
    command_url: str = ""
    query_url: str = ""
    # Resource limits, part of the API contract.
    max_message_chars: int = 32_000
    max_body_bytes: int = 256 * 1024
    max_streams_per_user: int = 8
    max_streams_per_ip: int = 32  # 0 = no cap
    max_streams: int = 2_000  # live streams in all, every instance (0 = no cap)
    # A live stream ends after this long; the client resumes with Last-Event-ID.
    max_stream_seconds: float = 600.0
    # Rate limits (services/http/ratelimit.py), counted in Redis across every instance:
    # `limits` strings ("N/second", "N/minute", ... joined by ";"), empty = that one off.
    rate_limit_enabled: bool = True
    rate_limit_per_ip: str = "50/second;1500/minute"
    rate_limit_per_user: str = "20/second;600/minute"
    rate_limit_chat_per_user: str = "2/second;30/minute"
    rate_limit_signup_per_ip: str = "5/minute;30/hour"
    rate_limit_legacy_per_ip: str = "1/second;30/minute"
    # Admission of chats (services/core/reply_slots.py): one reply in flight per session, at
    # most this many pending per user and in all, a daily token budget per user (0 = none).
    reply_slots_enabled: bool = True
    max_pending_replies_per_user: int = 3
    max_pending_replies: int = 200
    reply_slot_seconds: float = 300.0  # a slot no worker gave back frees itself then
    daily_token_budget: int = 200_000
    # The legacy POST /chat (services/command/legacy.py): on or off, its announced end, and
    # how many new (anonymous) projects one client IP may create through it.
    legacy_chat_enabled: bool = True
    legacy_chat_sunset: str = "Wed, 30 Jun 2027 00:00:00 GMT"
    rate_limit_legacy_new_project_per_ip: str = "5/hour"
    # Peers whose X-Forwarded-For is believed (the gateway, nginx): IPs or CIDRs, by ",".
    trusted_proxies: str = "127.0.0.1,::1"
    # Signed-token mode (services/http/auth.py): both services verify
    # `Authorization: Bearer <JWT HS256>` with this key and take the caller from its `sub`
    # (empty = off); with gateway_secret set they also refuse requests the Python gateway
    # did not sign. Set both behind the Python gateway, the first alone behind nginx.
    auth_jwt_secret: str = ""
    gateway_secret: str = ""
    # Who may name the caller with a plain X-User-ID (the seed's contract): a client, only
    # when this is on AND every bind is loopback (`make run`, the seed's examples); else a
    # client-sent X-User-ID is refused (401 user_header_refused) and people sign in
    # (services/http/credentials.py). AUTH_SESSION_HOURS: a browser session's lifetime.
    allow_user_header: bool = True
    auth_session_hours: float = 12.0
    # OpenID Connect (services/http/oidc.py; empty issuer = off): "Sign in with <name>",
    # and the provider's JWT access/ID tokens accepted as `Authorization: Bearer`.
    # AUTH_OIDC_REDIRECT_URL is the public .../api/v1/auth/oidc/callback the provider
    # redirects to (default: http://<host>:<port>/api/v1/auth/oidc/callback).
    auth_oidc_issuer: str = ""
    auth_oidc_client_id: str = ""
    auth_oidc_client_secret: str = ""
    auth_oidc_redirect_url: str = ""
    auth_oidc_name: str = "OpenID Connect"
    auth_oidc_algorithms: str = "RS256"
    # The services answer 431 past this many bytes of request headers (uvicorn sets none).
    max_header_bytes: int = 32 * 1024
    # Projection. Followers of the event store (projector, reply dispatcher) wake on the
    # Redis message sent after each append's commit; the sweep only covers a lost one.
    projector_batch_size: int = 500
    projector_sweep_seconds: float = 5.0
    projector_max_attempts: int = 3
    # The analytics event stream (Redis Stream <prefix><events_stream>)
    events_stream: str = "events"
    events_stream_maxlen: int = 1_000_000
    publisher_batch_size: int = 1_000
    publisher_poll_seconds: float = 5.0  # its sweep; it wakes like the projector
    replay_batch_size: int = 10_000
    # Live reply streams (Redis Streams per session)
    live_stream_maxlen: int = 10_000
    live_stream_ttl_seconds: int = 3600
    sse_heartbeat_seconds: float = 15.0
    # how long a stream following one message's reply (POST /chat, ?reply_to=) waits for it
    # to start before ending with an `error` event
    reply_start_timeout_seconds: float = 30.0
    min_position_wait_seconds: float = 5.0
    # Read replicas (services/query/replicas.py): hot standbys the query service reads from
    # (comma-separated URLs, as the owner user like DATABASE_URL; empty = the primary only).
    # A read with a position waits on its replica at most replica_wait_seconds before
    # trying the others and the primary; a replica that failed is skipped for
    # replica_retry_seconds.
    query_database_urls: str = ""
    replica_wait_seconds: float = 1.0
    replica_retry_seconds: float = 5.0
    # The assistant
    llm_provider: str = "offline"
    llm_base_url: str = ""
    llm_model: str = "offline-echo-1"
    llm_api_key: str = ""
    llm_timeout_seconds: float = 60.0
    llm_context_messages: int = 40
    # Every provider call asks for at most llm_max_tokens; the context sent is trimmed
    # (oldest first) to llm_context_tokens, estimated (workers/reply_plan.py).
    llm_max_tokens: int = 1024
    llm_context_tokens: int = 12_000
    # The offline provider's pause per delta (tests slow it down to act mid-reply).
    llm_offline_delay_seconds: float = 0.03
    # The reply lease (workers/reply_lease.py): a reply being written holds a lease renewed
    # every reply_lease_seconds / 3; one whose lease ran out (its worker died) is recorded
    # as failed by a sweep every reply_recovery_sweep_seconds. The same sweep notices a
    # broker Redis that lost its jobs (restarted without persistence) and has the reply
    # dispatcher ask again for unanswered messages of the last reply_recovery_window_seconds.
    reply_lease_seconds: float = 10.0
    reply_recovery_sweep_seconds: float = 1.0
    reply_recovery_window_seconds: float = 600.0
    log_level: str = "INFO"
    log_json: bool = True
    # With a token, the gateway's /metrics answers only `Authorization: Bearer <token>` (404
    # otherwise): not public through the gateway. The services' and the worker's own
    # /metrics are on ports that are not published.
    metrics_token: str = ""
    # The worker process's Prometheus endpoint (http://HOST:port/metrics); 0 turns it off.
    worker_metrics_port: int = 9100

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Each field reads the upper-cased variable of its name (DATABASE_URL, ...)."""
        env = os.environ if environ is None else environ
        raw: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            value = env.get(field.name.upper())
            if value is not None and value != "":
                raw[field.name] = value
        raw.update(overrides)
        settings = msgspec.convert(raw, cls, strict=False)
        return msgspec.structs.replace(
            settings,
            command_url=settings.command_url or f"http://127.0.0.1:{settings.command_port}",
            query_url=settings.query_url or f"http://127.0.0.1:{settings.query_port}",
        )
