//! One line of help per method (`rpc_get_method_help`, `pov-rpc help METHOD`):
//! parameters (`?`: optional) → result. The full reference is `dpu-firmware/README.md`;
//! a test checks that every method in [`super::methods`] has a line here and no line
//! names a method that does not exist.

/// `(method, help)` of pov-dpud's own methods (the common and reactor ones are
/// [`pov_jsonrpc::common::HELP`] and [`pov_jsonrpc::reactors::HELP`]).
pub const HELP: &[(&str, &str)] = &[
    ("rpc_get_methods", "current?, include_aliases? (both ignored) → every method's name"),
    ("rpc_get_method_help", "name? → {name, help} of that method, or the list of all"),
    ("save_config", "→ {subsystems: [{subsystem: \"pov\", config: [calls]}]}: the calls that rebuild this configuration (never a secret)"),
    ("framework_get_subsystems", "→ [{subsystem: \"pov\", depends_on: []}] (SPDK's client assembles save_config from this and framework_get_config)"),
    ("framework_get_config", "name (a subsystem) → that subsystem's calls, as in save_config"),
    ("keyring_file_add_key", "name (1-63 of A-Z a-z 0-9 _ . -), path (absolute; a regular file of the daemon's user, mode 0600 or 0400) → true"),
    ("keyring_file_remove_key", "name → true (-16 while a tenant uses the key)"),
    ("keyring_get_keys", "→ [{name, path, tenants}] (never a key's bytes)"),
    ("pov_tenant_create", "name, key (a keyring key) → true"),
    ("pov_tenant_delete", "name → true (its QoS policy goes too; the key stays)"),
    ("pov_tenant_get_tenants", "→ [{name, key}] (never a secret)"),
    ("pov_tenant_set_qos", "name, class (lc|bc), weight?, reservation_ios_per_sec?, reservation_mbytes_per_sec?, rw_ios_per_sec?, rw_mbytes_per_sec?, r_mbytes_per_sec?, w_mbytes_per_sec?, latency_target_us?, latency_percentile? (0 = none) → true"),
    ("pov_tenant_get_qos", "name? → [{name, class, weight, …}]: the policies set"),
    ("pov_tenant_clear_qos", "name → true (the tenant is BC, weight 100, no limits again)"),
    ("pov_qos_set_options", "enabled?, bc_in_flight_kib?, bc_in_flight_min_kib? (absent: unchanged) → the options in force"),
    ("pov_qos_get_options", "→ {enabled, bc_in_flight_kib, bc_in_flight_min_kib}"),
    ("pov_set_gathering", "enabled?, batch_size? (frames, 1-4096), window_us? (0-10000) (absent: unchanged) → {enabled, batch_size, window_us} in force"),
    ("pov_get_gathering", "→ {enabled, batch_size, window_us}"),
    ("pov_device_create", "name, socket, proxies ([\"tls:HOST:PORT\", …]), num_queues?, max_sessions?, heartbeat_interval_ms?, session_timeout_ms?, request_timeout_ms?, virtqueues? (1-64), reactor? → the device name"),
    ("pov_device_delete", "name → true"),
    ("pov_device_get_devices", "name? → PoV devices [{kind: \"pov\", name, socket, proxies, config, clients, stats (per tenant under stats.tenants), vhost_stats}] then volumes [{kind: \"volume\", …}]"),
    ("pov_volume_create", "name, socket, size (bytes, a multiple of block_size), block_size? (512|4096), volume? (on the proxy; default name), proxies (unless null), null?, virtqueues?, reactor?, request_timeout_ms? → the volume name"),
    ("pov_volume_delete", "name → true"),
    ("pov_route_set_table", "name (device or volume), epoch (≥ 1), placement ({kind: \"hash\"} or Ceph's), members ([endpoints]), owners? (member per slot) → true"),
    ("pov_route_get_table", "name → the route table in force, or null"),
    ("pov_route_clear_table", "name → true (back to each queue's home proxy)"),
    ("pov_proxy_get_proxies", "name → [{endpoint, state, in_flight, …}]: the device's proxy connections and their health"),
    ("bdev_get_bdevs", "name?, timeout? (ignored) → every device and volume as an SPDK bdev [{name, block_size, num_blocks, …}]"),
    ("bdev_get_iostat", "name?, per_channel? (true refused) → {tick_rate, ticks, bdevs: [{name, bytes_read, num_read_ops, …, read_latency_ticks, …}]} (ticks: ns)"),
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_method_has_help_and_every_help_a_method() {
        let methods = crate::rpc::method_names();
        let helped: Vec<&str> = crate::rpc::help_table().into_iter().map(|(n, _)| n).collect();
        for m in &methods {
            assert!(helped.contains(m), "{m} has no help line");
        }
        for h in &helped {
            assert!(methods.contains(h), "help for {h}, which is no method");
        }
        assert_eq!(helped.len(), methods.len(), "one line per method");
    }
}
