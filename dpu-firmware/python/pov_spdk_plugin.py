"""PoV's methods as `spdk-rpc` commands, through SPDK's plugin interface.

SPDK's command-line client (`spdk-rpc`, PyPI package `spdk`) loads extra commands from
a Python module named with `--plugin` that defines `spdk_rpc_plugin_initialize`. With
this directory on PYTHONPATH:

    spdk-rpc -s /var/tmp/pov-dpu.sock --plugin pov_spdk_plugin pov_device_get_devices
    spdk-rpc -s SOCK keyring_file_add_key acme-key /etc/pov/acme.key   # SPDK's own command
    spdk-rpc -s SOCK --plugin pov_spdk_plugin pov_tenant_create -n acme --key acme-key
    spdk-rpc -s SOCK --plugin pov_spdk_plugin pov_tenant_create -n acme --key-file /etc/pov/acme.key
    spdk-rpc -s SOCK --plugin pov_spdk_plugin pov_volume_create -n vol0 \\
        --socket /run/pov/vol0.sock --size 1073741824 --proxy tcp:10.0.0.5:4420

Parameters are those of pov-dpud's JSON-RPC methods (dpu-firmware/README.md); sizes are
bytes. A tenant's secret is a keyring key, read by pov-dpud itself from a key file (mode
0600): neither this plugin nor any command line ever holds the secret, only the key's
name or the file's path (`--key-file FILE` adds the key NAME-key from FILE, then creates
the tenant with it).
"""

import os

from spdk.rpc.cmd_parser import print_dict


def _name_only(subparsers, method, help):
    """A command whose one parameter is `name`."""
    def run(args):
        print_dict(args.client.call(method, {"name": args.name}))

    p = subparsers.add_parser(method, help=help)
    p.add_argument("-n", "--name", required=True)
    p.set_defaults(func=run)


def _frontend_args(p, proxy_required):
    """Options every vhost-user-blk object (PoV device or volume) has."""
    p.add_argument("-n", "--name", required=True)
    p.add_argument("--socket", required=True, help="vhost-user-blk socket path")
    p.add_argument("--proxy", action="append", required=proxy_required, help="tls:HOST:PORT (tcp:HOST:PORT for an unauthenticated development proxy; repeat for several)")
    p.add_argument("--virtqueues", type=int)
    p.add_argument("--reactor", type=int)
    p.add_argument("--request-timeout-ms", type=int)


def _frontend_params(args):
    return {"name": args.name, "socket": args.socket, "proxies": args.proxy, "virtqueues": args.virtqueues,
            "reactor": args.reactor, "request_timeout_ms": args.request_timeout_ms}


def spdk_rpc_plugin_initialize(subparsers):
    """Adds the pov_* commands to spdk-rpc's argument parser."""

    def pov_tenant_create(args):
        key = args.key
        if args.key_file:
            key = args.name + "-key"
            args.client.keyring_file_add_key(name=key, path=os.path.abspath(args.key_file))
        print_dict(args.client.pov_tenant_create(name=args.name, key=key))

    p = subparsers.add_parser("pov_tenant_create",
                              help="Create a tenant whose secret is a keyring key (keyring_file_add_key)")
    p.add_argument("-n", "--name", required=True, help="tenant name")
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--key", help="name of a key added with keyring_file_add_key")
    key.add_argument("--key-file", help="key file (mode 0600) to add as key NAME-key first")
    p.set_defaults(func=pov_tenant_create)

    _name_only(subparsers, "pov_tenant_delete", "Delete a tenant")

    def pov_tenant_get_tenants(args):
        print_dict(args.client.pov_tenant_get_tenants())

    p = subparsers.add_parser("pov_tenant_get_tenants", help="List tenants")
    p.set_defaults(func=pov_tenant_get_tenants)

    def pov_device_create(args):
        print_dict(args.client.pov_device_create(
            num_queues=args.num_queues, max_sessions=args.max_sessions,
            max_sessions_per_tenant=args.max_sessions_per_tenant, max_queues_per_tenant=args.max_queues_per_tenant,
            heartbeat_interval_ms=args.heartbeat_interval_ms, session_timeout_ms=args.session_timeout_ms,
            **_frontend_params(args)))

    p = subparsers.add_parser("pov_device_create", help="Create a PoV device (vhost-user-blk socket)")
    _frontend_args(p, proxy_required=True)
    p.add_argument("--num-queues", type=int, help="queues per session")
    p.add_argument("--max-sessions", type=int)
    p.add_argument("--max-sessions-per-tenant", type=int, help="default: max sessions - 1")
    p.add_argument("--max-queues-per-tenant", type=int, help="all of a tenant's sessions together")
    p.add_argument("--heartbeat-interval-ms", type=int)
    p.add_argument("--session-timeout-ms", type=int)
    p.set_defaults(func=pov_device_create)

    _name_only(subparsers, "pov_device_delete", "Delete a PoV device")

    def pov_device_get_devices(args):
        print_dict(args.client.pov_device_get_devices(name=args.name))

    p = subparsers.add_parser("pov_device_get_devices", help="List PoV devices and volumes with counters")
    p.add_argument("-n", "--name", help="only this one")
    p.set_defaults(func=pov_device_get_devices)

    def pov_volume_create(args):
        print_dict(args.client.pov_volume_create(
            size=args.size, block_size=args.block_size, volume=args.volume, null=args.null or None,
            **_frontend_params(args)))

    p = subparsers.add_parser("pov_volume_create", help="Create a plain volume (vhost-user-blk socket)")
    _frontend_args(p, proxy_required=False)
    p.add_argument("--size", type=int, required=True, help="bytes, a multiple of the block size")
    p.add_argument("--block-size", type=int, help="512 or 4096")
    p.add_argument("--volume", help="backing volume name on the proxy (default: the name)")
    p.add_argument("--null", action="store_true", help="a null volume: reads zeros, drops writes")
    p.set_defaults(func=pov_volume_create)

    _name_only(subparsers, "pov_volume_delete", "Delete a plain volume")
