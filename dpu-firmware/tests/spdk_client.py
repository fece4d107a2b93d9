"""SPDK's own JSON-RPC client (PyPI package `spdk`) against pov-dpud's control socket (and
a pov-proxy's, started here with --rpc-socket).

Run by scripts/spdk-rpc-test, which installs the package in a venv, starts pov-proxy
and pov-dpud and passes their coordinates in the environment:
  POV_RPC_SOCK    pov-dpud's control socket
  POV_PROXY_ENDPOINT  the proxy (tls:HOST:PORT or tcp:HOST:PORT; default
                  tcp:$POV_PROXY_ADDR)
  POV_WORK        a scratch directory
  POV_BIN         the directory with pov-dpud
  POV_TENANT      the tenant the script created (key POV_TENANT-key)

Nothing here re-implements the client: calls go through spdk.rpc.client.JSONRPCClient,
spdk.rpc.config.save_config and the spdk-rpc command line.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import time
import unittest

import spdk
from spdk.rpc.client import JSONRPCClient, JSONRPCException
from spdk.rpc.config import save_config

SOCK = os.environ["POV_RPC_SOCK"]
PROXY = os.environ.get("POV_PROXY_ENDPOINT") or "tcp:" + os.environ["POV_PROXY_ADDR"]
WORK = os.environ["POV_WORK"]
BIN = os.environ["POV_BIN"]
SPDK_RPC = shutil.which("spdk-rpc")
PLUGIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python")
STACK_KEY = os.environ.get("POV_TENANT", "spdk") + "-key"


def key_file(name, secret, mode=0o600):
    """A key file in the scratch directory holding `secret`."""
    path = os.path.join(WORK, name)
    if os.path.exists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    os.chmod(path, mode)
    return path


def error_of(exc):
    """The JSON-RPC error object inside a JSONRPCException's message (the client puts
    the server's error object after the line 'response:')."""
    text = exc.message
    return json.loads(text[text.index("response:") + len("response:"):])


class SpdkClient(unittest.TestCase):
    def setUp(self):
        self.c = JSONRPCClient(SOCK, timeout=30.0)

    def tearDown(self):
        self.c.close()

    def expect_error(self, code, method, **params):
        with self.assertRaises(JSONRPCException) as cm:
            self.c.call(method, params)
        err = error_of(cm.exception)
        self.assertEqual(err["code"], code, err)
        self.assertTrue(err["message"], err)
        return err

    def test_rpc_get_methods(self):
        methods = self.c.rpc_get_methods()
        for m in ["rpc_get_methods", "framework_get_reactors", "pov_tenant_create",
                  "pov_device_create", "pov_device_get_devices", "save_config",
                  "framework_get_subsystems", "framework_get_config", "pov_volume_create",
                  "pov_volume_delete", "keyring_file_add_key", "keyring_file_remove_key",
                  "keyring_get_keys"]:
            self.assertIn(m, methods)
        # SPDK's load_config asks with these flags.
        self.assertEqual(self.c.rpc_get_methods(current=True, include_aliases=False), methods)

    def test_framework_get_reactors(self):
        r = self.c.framework_get_reactors()
        self.assertGreaterEqual(len(r["reactors"]), 1)
        self.assertEqual(r["tick_rate"], 10**9)
        # Exactly the fields spdk_top's decoders take (they reject unknown keys).
        self.assertEqual(sorted(r["reactors"][0]), ["busy", "idle", "lcore", "lw_threads"])
        self.assertGreater(r["reactors"][0]["busy"] + r["reactors"][0]["idle"], 0)
        t = self.c.thread_get_pollers()
        pollers = [p["name"] for x in t["threads"] for p in x["active_pollers"]]
        self.assertIn("vhost_blk_pov0", pollers)
        s = self.c.thread_get_stats()
        self.assertEqual(sorted(s["threads"][0]), ["active_pollers_count", "busy", "cpumask", "id", "idle",
                                                   "name", "paused_pollers_count", "timed_pollers_count"])
        self.assertEqual(s["threads"][0]["id"], 1)

    def test_bdev_statistics_count_real_io(self):
        """pov-host lists the device's root: block IO the adapter counts, seen through
        SPDK's bdev_get_iostat (client method and command line)."""
        bdevs = self.c.bdev_get_bdevs(name="pov0")
        self.assertEqual(len(bdevs), 1)
        self.assertEqual((bdevs[0]["name"], bdevs[0]["block_size"]), ("pov0", 512))
        self.assertGreater(bdevs[0]["num_blocks"], 0)
        before = self.c.bdev_get_iostat(name="pov0")["bdevs"][0]
        env = dict(os.environ, POV_DEVICE="vhost-user:" + os.path.join(os.path.dirname(SOCK), "pov0.sock"))
        r = subprocess.run([os.path.join(BIN, "pov-host"), "ls", "pov:/"], capture_output=True, text=True,
                           timeout=60, env=env)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        io = self.c.bdev_get_iostat(name="pov0")
        self.assertEqual(io["tick_rate"], 10**9)
        after = io["bdevs"][0]
        self.assertGreater(after["num_read_ops"], before["num_read_ops"])
        self.assertGreater(after["num_write_ops"], before["num_write_ops"])
        self.assertGreater(after["bytes_written"], before["bytes_written"])
        self.assertGreater(after["read_latency_ticks"], before["read_latency_ticks"])
        self.assertGreaterEqual(after["max_read_latency_ticks"], after["min_read_latency_ticks"])
        # The device's per-tenant counters saw the session and its List request.
        dev = self.c.pov_device_get_devices(name="pov0")[0]
        tenants = {t["tenant"]: t for t in dev["stats"]["tenants"]}
        self.assertGreaterEqual(tenants[os.environ.get("POV_TENANT", "spdk")]["by_op"].get("list", 0), 1)
        self.expect_error(-19, "bdev_get_iostat", name="no-such-bdev")

    def test_version_and_log_level(self):
        v = self.c.spdk_get_version()
        self.assertTrue(v["version"].startswith("PoV v"), v)
        self.assertEqual(sorted(v["fields"]), ["major", "minor", "patch", "suffix"])
        self.assertEqual(self.c.log_get_level(), "INFO")
        self.assertEqual(self.c.log_set_level(level="DEBUG"), True)
        self.assertEqual(self.c.log_get_level(), "DEBUG")
        self.assertEqual(self.c.log_get_print_level(), "DEBUG")
        self.assertEqual(self.c.log_set_level(level="INFO"), True)
        self.expect_error(-32602, "log_set_level", level="verbose")

    def test_tenant_device_and_save_config(self):
        path = key_file("spdk-t.key", "spdk-secret")
        self.assertEqual(self.c.keyring_file_add_key(name="spdk-t-key", path=path), True)
        self.assertEqual(self.c.pov_tenant_create(name="spdk-t", key="spdk-t-key"), True)
        names = [t["name"] for t in self.c.pov_tenant_get_tenants()]
        self.assertIn("spdk-t", names)
        sock = os.path.join(WORK, "spdk-dev.sock")
        self.assertEqual(self.c.pov_device_create(name="spdkdev", socket=sock, proxies=[PROXY],
                                                  virtqueues=2), "spdkdev")
        self.assertTrue(os.path.exists(sock))
        devs = self.c.pov_device_get_devices(name="spdkdev")
        self.assertEqual([d["name"] for d in devs], ["spdkdev"])
        self.assertEqual(devs[0]["virtqueues"], 2)
        all_names = [d["name"] for d in self.c.pov_device_get_devices()]
        self.assertIn("pov0", all_names)
        self.assertIn("spdkdev", all_names)

        # SPDK's client-side save_config (framework_get_subsystems + framework_get_config).
        out = io.StringIO()
        save_config(self.c, out, indent=2)
        saved = json.loads(out.getvalue())
        self.assertEqual(saved, self.c.save_config())
        calls = saved["subsystems"][0]["config"]
        self.assertIn({"method": "keyring_file_add_key",
                       "params": {"name": "spdk-t-key", "path": path}}, calls)
        self.assertIn({"method": "pov_tenant_create",
                       "params": {"name": "spdk-t", "key": "spdk-t-key"}}, calls)
        # Keys before the tenants that use them; never a secret.
        methods = [x["method"] for x in calls]
        self.assertLess(methods.index("keyring_file_add_key"), methods.index("pov_tenant_create"))
        self.assertNotIn("spdk-secret", json.dumps(saved))
        dev_calls = [x for x in calls if x["method"] == "pov_device_create"
                     and x["params"]["name"] == "spdkdev"]
        self.assertEqual(len(dev_calls), 1)

        # The saved file replays in a new pov-dpud (pov-dpud --config), once this daemon
        # has let go of the device's socket.
        self.assertEqual(self.c.pov_device_delete(name="spdkdev"), True)
        path = os.path.join(WORK, "saved.json")
        with open(path, "w") as f:
            json.dump({"subsystems": [{"subsystem": "pov", "config": [
                x for x in calls if x["method"] != "pov_device_create" or x["params"]["name"] == "spdkdev"
            ]}]}, f)
        sock2 = os.path.join(WORK, "rpc2.sock")
        d2 = subprocess.Popen([os.path.join(BIN, "pov-dpud"), "--rpc-socket", sock2, "--config", path],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            c2 = JSONRPCClient(sock2, timeout=30.0, conn_retries=50)
            try:
                self.assertEqual([d["name"] for d in c2.pov_device_get_devices()], ["spdkdev"])
                self.assertIn("spdk-t", [t["name"] for t in c2.pov_tenant_get_tenants()])
                self.assertIn("spdk-t-key", [k["name"] for k in c2.keyring_get_keys()])
            finally:
                c2.close()
        finally:
            d2.terminate()
            d2.wait(timeout=20)
        self.assertEqual(self.c.pov_tenant_delete(name="spdk-t"), True)
        self.assertEqual(self.c.keyring_file_remove_key(name="spdk-t-key"), True)

    def test_keyring(self):
        path = key_file("kr.key", "kr-secret-77")
        self.assertEqual(self.c.keyring_file_add_key(name="kr-key", path=path), True)
        keys = {k["name"]: k for k in self.c.keyring_get_keys()}
        self.assertEqual(keys["kr-key"]["path"], path)
        self.assertEqual(keys[STACK_KEY]["tenants"], [os.environ.get("POV_TENANT", "spdk")])
        self.assertNotIn("kr-secret-77", json.dumps(list(keys.values())))
        self.expect_error(-17, "keyring_file_add_key", name="kr-key", path=path)
        # SPDK's own checks: a key file others may read is refused with a clear error.
        world = key_file("world.key", "kr-secret-77", 0o644)
        err = self.expect_error(-1, "keyring_file_add_key", name="w-key", path=world)
        self.assertIn("0644", err["message"])
        self.assertIn("chmod 600", err["message"])
        self.expect_error(-1, "keyring_file_add_key", name="r-key", path="relative.key")
        self.expect_error(-2, "keyring_file_add_key", name="m-key", path=os.path.join(WORK, "missing.key"))
        self.expect_error(-16, "keyring_file_remove_key", name=STACK_KEY)  # in use by the stack's tenant
        self.expect_error(-19, "keyring_file_remove_key", name="no-such-key")
        self.assertEqual(self.c.keyring_file_remove_key(name="kr-key"), True)
        self.assertNotIn("kr-key", [k["name"] for k in self.c.keyring_get_keys()])

    def test_volume_create_and_list(self):
        self.assertIn("pov_volume_create", self.c.rpc_get_methods())
        sock = os.path.join(WORK, "spdk-vol.sock")
        self.assertEqual(self.c.pov_volume_create(name="spdkvol", socket=sock, size=16 << 20,
                                                  proxies=[PROXY]), "spdkvol")
        devs = {d["name"]: d for d in self.c.pov_device_get_devices()}
        self.assertEqual(devs["spdkvol"]["kind"], "volume")
        self.assertEqual(devs["pov0"]["kind"], "pov")
        calls = self.c.framework_get_config(name="pov")
        self.assertTrue(any(x["method"] == "pov_volume_create" and x["params"]["name"] == "spdkvol"
                            for x in calls))
        self.expect_error(-17, "pov_volume_create", name="spdkvol", socket=sock + "2",
                          size=16 << 20, proxies=[PROXY])
        self.expect_error(-32602, "pov_volume_create", name="badvol", socket=sock + "3",
                          size=1000, proxies=[PROXY])
        self.assertEqual(self.c.pov_volume_delete(name="spdkvol"), True)
        self.expect_error(-19, "pov_volume_delete", name="spdkvol")

    def test_errors_use_spdk_codes(self):
        self.expect_error(-32601, "bdev_malloc_create", num_blocks=8, block_size=512)
        self.expect_error(-32602, "pov_tenant_create", name="x")  # no key
        err = self.expect_error(-32602, "pov_tenant_create", name="x", secret="s3")  # the removed form
        self.assertIn("keyring_file_add_key", err["message"])
        self.expect_error(-19, "pov_tenant_create", name="x", key="no-such-key")
        self.expect_error(-32602, "pov_device_get_devices", bogus=1)
        self.expect_error(-19, "pov_device_delete", name="no-such-device")
        self.expect_error(-19, "pov_tenant_delete", name="no-such-tenant")
        self.expect_error(-19, "framework_get_config", name="nvmf")
        self.c.pov_tenant_create(name="dup", key=STACK_KEY)
        self.expect_error(-17, "pov_tenant_create", name="dup", key=STACK_KEY)
        self.expect_error(-17, "pov_device_create", name="pov0", socket=os.path.join(WORK, "x.sock"),
                          proxies=[PROXY])
        self.c.pov_tenant_delete(name="dup")
        # The connection still works after errors.
        self.assertIn("rpc_get_methods", self.c.rpc_get_methods())

    def test_spdk_rpc_command_line(self):
        self.assertIsNotNone(SPDK_RPC, "spdk-rpc not on PATH")
        run = lambda *a: subprocess.run([SPDK_RPC, "-s", SOCK, *a], capture_output=True, text=True, timeout=60)
        r = run("rpc_get_methods")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("pov_device_create", json.loads(r.stdout))
        r = run("framework_get_reactors")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("reactors", json.loads(r.stdout))
        for cmd in (["bdev_get_iostat"], ["bdev_get_bdevs"], ["thread_get_stats"], ["thread_get_pollers"],
                    ["spdk_get_version"], ["log_get_level"]):
            r = run(*cmd)
            self.assertEqual(r.returncode, 0, " ".join(cmd) + ": " + r.stdout + r.stderr)
            json.loads(r.stdout)
        self.assertIn("pov0", [b["name"] for b in json.loads(run("bdev_get_iostat").stdout)["bdevs"]])
        r = run("save_config")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(json.loads(r.stdout)["subsystems"][0]["subsystem"], "pov")
        # SPDK's own keyring commands.
        path = key_file("cli.key", "cli-secret-5")
        r = run("keyring_file_add_key", "cli-key", path)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = run("keyring_get_keys")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn({"name": "cli-key", "path": path, "tenants": []}, json.loads(r.stdout))
        self.assertNotIn("cli-secret-5", r.stdout)
        r = run("keyring_file_remove_key", "cli-key")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # An SPDK method pov-dpud does not have: a clear error and exit status 1.
        r = run("nvmf_get_subsystems")
        self.assertEqual(r.returncode, 1)
        self.assertIn("-32601", r.stdout + r.stderr)

    def test_spdk_rpc_plugin_commands(self):
        """PoV's commands through spdk-rpc's own --plugin mechanism."""
        env = dict(os.environ, PYTHONPATH=PLUGIN_DIR)
        env.pop("POV_SECRET", None)
        path = key_file("plugin.key", "plugin-secret")

        def run(*a):
            r = subprocess.run([SPDK_RPC, "-s", SOCK, "--plugin", "pov_spdk_plugin", *a],
                               capture_output=True, text=True, timeout=60, env=env)
            self.assertNotIn("Module pov_spdk_plugin not found", r.stdout, r.stdout)
            return r

        def ok(*a):
            r = run(*a)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            return json.loads(r.stdout)

        self.assertEqual(ok("pov_tenant_create", "-n", "plugin-t", "--key-file", path), True)
        self.assertEqual(ok("pov_tenant_create", "-n", "plugin-u", "--key", "plugin-t-key"), True)
        self.assertEqual(run("pov_tenant_create", "-n", "plugin-v").returncode, 2, "a key is required")
        self.assertIn("plugin-t", [t["name"] for t in ok("pov_tenant_get_tenants")])
        config = self.c.framework_get_config(name="pov")
        self.assertIn({"name": "plugin-t", "key": "plugin-t-key"},
                      [x["params"] for x in config if x["method"] == "pov_tenant_create"])
        self.assertIn({"name": "plugin-t-key", "path": path},
                      [x["params"] for x in config if x["method"] == "keyring_file_add_key"])
        self.assertNotIn("plugin-secret", json.dumps(config))
        sock = os.path.join(WORK, "plugin-dev.sock")
        self.assertEqual(ok("pov_device_create", "-n", "plugdev", "--socket", sock, "--proxy", PROXY,
                            "--virtqueues", "2", "--session-timeout-ms", "5000", "--max-sessions-per-tenant", "3"),
                         "plugdev")
        dev = ok("pov_device_get_devices", "-n", "plugdev")[0]
        self.assertEqual((dev["virtqueues"], dev["config"]["session_timeout_ms"]), (2, 5000))
        self.assertEqual(dev["config"]["max_sessions_per_tenant"], 3)
        vsock = os.path.join(WORK, "plugin-vol.sock")
        self.assertEqual(ok("pov_volume_create", "-n", "plugvol", "--socket", vsock,
                            "--size", str(8 << 20), "--block-size", "4096", "--proxy", PROXY), "plugvol")
        self.assertEqual(ok("pov_device_get_devices", "-n", "plugvol")[0]["kind"], "volume")
        # Errors keep SPDK's codes and fail the command.
        r = run("pov_volume_create", "-n", "plugvol", "--socket", vsock + "2", "--size", str(8 << 20),
                "--proxy", PROXY)
        self.assertEqual(r.returncode, 1)
        self.assertIn('"code": -17', r.stdout)
        self.assertEqual(ok("pov_volume_delete", "-n", "plugvol"), True)
        self.assertEqual(ok("pov_device_delete", "-n", "plugdev"), True)
        self.assertEqual(ok("pov_tenant_delete", "-n", "plugin-t"), True)
        self.assertEqual(ok("pov_tenant_delete", "-n", "plugin-u"), True)
        self.assertEqual(self.c.keyring_file_remove_key(name="plugin-t-key"), True)
        r = run("pov_device_delete", "-n", "plugdev")
        self.assertEqual(r.returncode, 1)
        self.assertIn('"code": -19', r.stdout)


class SpdkClientOnProxy(unittest.TestCase):
    """pov-proxy --rpc-socket: SPDK's client (library and spdk-rpc) reads its reactor
    and thread statistics, its version and log level, and PoV's proxy_* methods."""

    @classmethod
    def setUpClass(cls):
        cls.sock = os.path.join(WORK, "proxy-rpc.sock")
        cls.proxy = subprocess.Popen(
            [os.path.join(BIN, "pov-proxy"), "--listen", "tcp:127.0.0.1:0", "--backend", "null",
             "--reactors", "2", "--rpc-socket", cls.sock],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = cls.proxy.stdout.readline()
        assert line.startswith("pov-proxy listening on "), line
        for _ in range(100):
            if os.path.exists(cls.sock):
                break
            time.sleep(0.05)

    @classmethod
    def tearDownClass(cls):
        cls.proxy.terminate()
        cls.proxy.wait(timeout=30)

    def setUp(self):
        self.c = JSONRPCClient(self.sock, timeout=30.0)

    def tearDown(self):
        self.c.close()

    def test_statistics_version_and_log_level(self):
        methods = self.c.rpc_get_methods()
        for m in ["proxy_get_stats", "proxy_get_tenants", "framework_get_reactors", "thread_get_stats",
                  "log_set_level", "spdk_get_version"]:
            self.assertIn(m, methods)
        r = self.c.framework_get_reactors()
        self.assertEqual(len(r["reactors"]), 2)
        self.assertEqual(sorted(r["reactors"][0]), ["busy", "idle", "lcore", "lw_threads"])
        s = self.c.thread_get_stats()
        self.assertEqual([t["id"] for t in s["threads"]], [1, 2])
        self.assertTrue(self.c.spdk_get_version()["version"].startswith("PoV v"))
        self.assertEqual(self.c.log_set_level(level="DEBUG"), True)
        self.assertEqual(self.c.log_get_level(), "DEBUG")
        stats = self.c.call("proxy_get_stats")
        self.assertEqual(stats["backend"], "null")
        self.assertEqual(stats["server"]["frames"], 0)
        self.assertEqual(self.c.call("proxy_get_tenants"), [])
        with self.assertRaises(JSONRPCException) as cm:
            self.c.call("proxy_get_tenants", {"name": "nobody"})
        self.assertEqual(error_of(cm.exception)["code"], -19)
        with self.assertRaises(JSONRPCException) as cm:
            self.c.call("bdev_get_iostat")
        self.assertEqual(error_of(cm.exception)["code"], -32601)

    def test_spdk_rpc_command_line(self):
        self.assertIsNotNone(SPDK_RPC, "spdk-rpc not on PATH")
        for cmd in (["thread_get_stats"], ["thread_get_pollers"], ["framework_get_reactors"],
                    ["spdk_get_version"], ["log_get_level"]):
            r = subprocess.run([SPDK_RPC, "-s", self.sock, *cmd], capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, " ".join(cmd) + ": " + r.stdout + r.stderr)
            json.loads(r.stdout)
        r = subprocess.run([os.path.join(BIN, "pov-rpc"), "-s", self.sock, "proxy_get_stats"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("tenants", json.loads(r.stdout))


if __name__ == "__main__":
    print(f"spdk package {getattr(spdk, '__version__', '?')} from {os.path.dirname(spdk.__file__)}")
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    skipped = len(result.skipped)
    print(f"{result.testsRun - failed - skipped} passed, {failed} failed, {skipped} skipped")
    sys.exit(1 if failed or result.testsRun == 0 else 0)
