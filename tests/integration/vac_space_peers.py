"""Peers of a vac space for tests: a factory speaking Vac 03.01's exact answers, and Vac's own client.

Also runnable, to put them in a network namespace of their own:
  python vac_space_peers.py serve SPACE NAME IP:PORT MACHINETYPE=PROCESSORS...
  python vac_space_peers.py ask SPACE FACTORY IP:PORT   (prints what Vac's client keeps of each query, as JSON)
"""

import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid


def vac_json(message):
    """JSON as Vac 03.01 writes it: Python 2's separators, every float as "%.2f"."""
    def value(v):
        return "%.2f" % v if isinstance(v, float) else json.dumps(v)
    return ("{" + ", ".join(f"{json.dumps(k)}: {value(v)}" for k, v in message.items()) + "}").encode()


class Vac0301Factory(threading.Thread):
    """Answers every query as a Vac 03.01 factory does, with its exact field set."""

    def __init__(self, space, name, machinetypes, abort=None, address=("127.0.0.1", 0)):
        super().__init__(daemon=True)
        self.space, self.name, self.machinetypes, self.abort = space, name, machinetypes, abort
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = []
        self.stopping = threading.Event()

    def common(self, kind, query):
        return {"message_type": kind, "vac_version": "Vac 03.01 -", "daemon_version": "Vac 03.01 -",
                "vacquery_version": "VacQuery 01.03", "cookie": query["cookie"], "space": self.space,
                "factory": self.name, "time_sent": int(time.time()), "site": "vac-test.example.org"}

    def answers(self, query):
        kind = query.get("message_type") or {"machines": "machines_query", "factories": "factory_query"}.get(
            query.get("method"), "machinetypes_query")
        if kind == "machinetypes_query":
            for machinetype, processors in self.machinetypes.items():
                message, at, machine = self.abort[1:] if self.abort and self.abort[0] == machinetype else (
                    None, None, None)
                yield {**self.common("machinetype_status", query), "num_machinetypes": len(self.machinetypes),
                       "machinetype": machinetype, "running_hs06": 10.0 * processors,
                       "running_machines": int(processors), "running_cpus": float(processors),
                       "running_processors": float(processors), "num_before_fizzle": 0,
                       "shutdown_message": message if message else None, "shutdown_time": at,
                       "shutdown_machine": machine, "bytes_per_processor": 2147483648,
                       "max_wallclock_seconds": 172800, "max_processors": 1}
        elif kind == "machines_query":
            for i, (machinetype, processors) in enumerate(self.machinetypes.items()):
                yield {**self.common("machine_status", query), "num_machines": len(self.machinetypes),
                       "machine": f"{self.name.split('.')[0]}-{i:02d}.vac-test.example.org", "state": "Running",
                       "machine_model": "docker", "uuid": str(uuid.uuid4()), "created_time": int(time.time()) - 100,
                       "started_time": int(time.time()) - 90, "heartbeat_time": int(time.time()) - 5,
                       "num_cpus": float(processors), "num_processors": float(processors), "cpu_seconds": 80,
                       "cpu_percentage": 88.89, "hs06": 10.0 * processors, "machinetype": machinetype,
                       "shutdown_message": None, "shutdown_time": None}
        elif kind == "factory_query":
            used = float(sum(self.machinetypes.values()))
            yield {**self.common("factory_status", query), "running_cpus": used, "running_processors": used,
                   "running_machines": len(self.machinetypes), "running_hs06": 10.0 * used, "max_cpus": 8,
                   "max_processors": 8, "max_machines": 8, "max_hs06": 80.0, "total_cpus": 8, "total_machines": 8,
                   "total_hs06": 80.0, "root_disk_avail_kb": 1000, "root_disk_avail_inodes": 10,
                   "vac_disk_avail_kb": 1000, "daemon_disk_avail_kb": 1000, "vac_disk_avail_inodes": 10,
                   "daemon_disk_avail_inodes": 10, "load_average": 1.25, "kernel_version": "3.10.0",
                   "os_issue": "\\S", "boot_time": 1, "factory_heartbeat_time": int(time.time()),
                   "responder_heartbeat_time": int(time.time()), "swap_used_kb": 0, "swap_free_kb": 0,
                   "mem_used_kb": 1, "mem_total_kb": 2}

    def run(self):
        while not self.stopping.is_set():
            try:
                data, address = self.sock.recvfrom(10240)
            except socket.timeout:
                continue
            query = json.loads(data)
            if query.get("space") != self.space:
                continue
            self.queries.append(query)
            for answer in self.answers(query):
                self.sock.sendto(vac_json(answer), address)

    def stop(self):
        self.stopping.set()
        self.join(5)
        self.sock.close()


def vac_client(kind, port, factory, space, method, host="127.0.0.1"):
    """Ask one factory as Vac's own client does (sendMachinetypesRequests and the like): the answers it keeps."""
    required = {  # what Vac's client checks is present before it keeps an answer
        "machinetype_status": ("num_machinetypes", "machinetype", "running_hs06", "num_before_fizzle",
                               "shutdown_message", "shutdown_time", "shutdown_machine"),
        "machine_status": ("num_machines", "machine", "state", "uuid", "created_time", "started_time",
                           "heartbeat_time", "cpu_seconds", "cpu_percentage", "hs06", "machinetype",
                           "shutdown_message", "shutdown_time"),
        "factory_status": ()}
    answer_type = {"machinetypes_query": "machinetype_status", "machines_query": "machine_status",
                   "factory_query": "factory_status"}[kind]
    count_key = {"machinetype_status": "num_machinetypes", "machine_status": "num_machines"}.get(answer_type)
    salt = os.urandom(32).hex()
    kept, expected = {}, 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0 / 5)
        for _ in range(6):
            if len(kept) >= expected:
                break
            query = {"vac_version": "Vac 03.01 -", "vacquery_version": "VacQuery 01.02", "space": space,
                     "cookie": hashlib.sha256((salt + factory).encode()).hexdigest(), "message_type": kind}
            if method:
                query["method"] = method
            sock.sendto(json.dumps(query).encode(), (host, port))
            while True:
                try:
                    response = json.loads(sock.recvfrom(10240)[0])
                except socket.timeout:
                    break
                if response.get("message_type") == answer_type and response.get("space") == space \
                        and "factory" in response \
                        and response.get("cookie") == hashlib.sha256((salt + response["factory"]).encode()).hexdigest() \
                        and all(key in response for key in required[answer_type]):
                    expected = response[count_key] if count_key else 1
                    kept[response.get("machinetype") or response.get("machine") or "factory"] = response
    return kept


def main(argv):
    if argv[0] == "serve":
        space, name, where, *types_ = argv[1:]
        host, port = where.rsplit(":", 1)
        factory = Vac0301Factory(space, name, {t.split("=")[0]: int(t.split("=")[1]) for t in types_},
                                 address=(host, int(port)))
        factory.start()
        print("serving", flush=True)
        factory.join()
    elif argv[0] == "ask":
        space, name, where = argv[1:]
        host, port = where.rsplit(":", 1)
        print(json.dumps({kind: vac_client(kind, int(port), name, space, method, host=host)
                          for kind, method in (("machinetypes_query", None), ("machines_query", "machines"),
                                               ("factory_query", "factories"))}))


if __name__ == "__main__":
    main(sys.argv[1:])


def free_udp_port():
    """A UDP port on 127.0.0.1 nobody holds right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
