"""The keys each table of the config file takes: any other is reported as unknown."""

from __future__ import annotations

# By the table's place in the file. The config fuzzer (loadtest/fuzz_targets.py) draws its documents from the same
# lists.
KEYS: dict[str, frozenset[str]] = {
    key: frozenset(names.split())
    for key, names in {
        "": "server cache origin sites demo admin log cluster",
        "server": "listen workers client_write_timeout max_requests max_connections rate_limit burst fast_path "
        "proxy_protocol proxy_protocol_from trusted_forwarders "
        "header_timeout idle_timeout disk_send tls_listen tls watchdog drain watch_config "
        "reload_timeout server_field",
        "tls": "cert key",
        "cache": "dir memory disk disks slice fill_slices fill_memory memory_policy memory_headroom tiers save_on_stop "
        "max_object_size lease stats_interval purged_records",
        "cache.disks": "path size",
        "origin": "connect_timeout read_timeout max_connections body_timeout body_connections",
        "sites": "name hosts origins key_query origin_host forward_fields cache allow tls signing origin_connections",
        "sites.signing": "secrets secret_file expires_param signature_param prefix_param client",
        "sites.cache": "min_ttl max_ttl heuristic_fraction heuristic_max store_set_cookie max_stale max_object_size",
        "cluster": "self nodes rise fall interval timeout dns dns_interval key key_file accept_key accept_key_file",
        "cluster.nodes": "id address admin weight",
        "admin": "listen tokens job_retention max_jobs prefetch_slots",
        "admin.tokens": "name token token_file role sites",
        "demo": "origin",
        "log": "access",
    }.items()
}
