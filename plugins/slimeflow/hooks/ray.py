"""RayClusterHook: the one place that talks to Ray on a run's nodes.

Everything slimeflow asks of Ray goes through here: which Ray processes run on each node
(`raystate.py local`), what Ray itself counts (`ray list nodes`), the state of a job (the Jobs
REST API, read on the head by `raystate.py job`), `ray start` without ever starting a second
raylet, `ray job submit` with its one retryable answer, `ray job stop` and `ray stop`. The
operators (train, teardown) say what should happen; this hook knows how Ray answers. The
trigger's polls run `jobwatch.py` on the head, which reads the job through the same
`raystate.read_job`.

Like the providers' SSHHook it owns no policy about runs: it is built over a runner that has
`run_step(cfg, step, **kw) -> Result` and `run_json(cfg, step, **kw) -> dict` (an operator, or
`NodeRunner` below when a task is being killed and has no operator state left to lean on).
"""
from __future__ import annotations

import ipaddress
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from slimeflow import builders
from slimeflow.config import RunConfig


class RayError(RuntimeError):
    """Ray on the nodes is not in a state this run can work with; the message is for ops."""


# Right after `ray start`, the dashboard can answer a submit with HTTP 500 "No available agent
# to submit job, please try again later." until the head's job agent registers. Only that is
# retried, for at most SUBMIT_RETRY_S.
NO_AGENT = "No available agent to submit job"
SUBMIT_RETRY_S = 60
SUBMIT_RETRY_PAUSE_S = 3

ACTIVE = ("PENDING", "RUNNING")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def submit_failure(text: str, sub_id: str) -> str:
    """'no_agent' (retry), 'exists' (a job with this id is already there) or 'other'."""
    if NO_AGENT in text:
        return "no_agent"
    if f"Job with submission_id {sub_id} already exists" in text:
        return "exists"
    return "other"


def started_by_run(record: dict) -> bool:
    """Did this run start the Ray that may run on its nodes? Its run record says so
    (`ray_started`, written before the first `ray start`); records written before that flag
    existed: an attempt was submitted."""
    return bool(record.get("ray_started")) or any(a.get("submitted")
                                                  for a in record.get("attempts", []))


def ray_node_ips(cfg) -> dict:
    """{IP Ray knows the node by: connection id}. Ray names nodes by their --node-ip-address:
    the head's is master_addr, a worker's its connection host (builders.ray_start_worker)."""
    ips = {h: n for n, h in zip(cfg.cluster.nodes, cfg.cluster.hosts)}
    ips[cfg.cluster.master_addr] = cfg.cluster.head
    return ips


def foreign_ray(node: str, local: dict) -> str:
    """The one sentence preflight gives for a node where Ray runs that this run did not start."""
    raylets = [str(r.get("pid")) for r in local.get("raylets") or []]
    gcs = [str(p) for p in local.get("gcs_servers") or []]
    what = ", ".join(x for x in (f"raylet pid(s) {', '.join(raylets)}" if raylets else "",
                                 f"GCS server pid(s) {', '.join(gcs)}" if gcs else "") if x)
    return (f"node {node} already runs a Ray that this run did not start ({what}); stop it "
            f"there (`ray stop`) if it is left over from an earlier run, or wait for its owner "
            f"to finish: slimeflow never stops a Ray it did not start.")


@dataclass
class RayStartPlan:
    reuse: bool   # the running cluster checks out: start nothing
    stop: list    # nodes to `ray stop` first (each runs Ray)
    start: list   # nodes to `ray start` on, the head first
    reason: str   # one sentence for the task log


def parse_ray_nodes(text: str):
    """The ALIVE nodes in `ray list nodes --format json` output, as [{ip, gpus, head}]; None
    when the output holds no node list. DEAD entries (stopped or lost raylets) stay listed by
    Ray for a while and do not count."""
    start, end = (text or "").find("["), (text or "").rfind("]")
    if start < 0 or end < start:
        return None
    try:
        entries = json.loads(text[start:end + 1])
    except ValueError:
        return None
    if not isinstance(entries, list):
        return None
    alive = []
    for e in entries:
        if not isinstance(e, dict) or e.get("state") != "ALIVE":
            continue
        gpus = (e.get("resources_total") or {}).get("GPU") or 0
        try:
            gpus = float(gpus)
        except (TypeError, ValueError):
            gpus = 0.0
        alive.append({"ip": e.get("node_ip"), "gpus": gpus, "head": bool(e.get("is_head_node"))})
    return alive


def _is_ip(text) -> bool:
    try:
        ipaddress.ip_address(str(text))
        return True
    except ValueError:
        return False


def ray_cluster_problems(cfg: RunConfig, local: dict, alive) -> list:
    """Why the Ray that runs now is not exactly this run's cluster (empty: it is).

    local: {node: raystate.py local} for every node; alive: parse_ray_nodes() of the head's
    `ray list nodes`, or None. One raylet per node, a GCS on the head, and Ray's own count of
    alive nodes and their GPUs must all match the run; a node that a second `ray start` joined
    twice shows up both locally (two raylets) and in Ray's list (its IP twice)."""
    nodes, head = list(cfg.cluster.nodes), cfg.cluster.head
    problems = []
    for n in nodes:
        raylets = (local.get(n) or {}).get("raylets") or []
        if not raylets:
            problems.append(f"node {n} runs no raylet")
        elif len(raylets) > 1:
            problems.append(f"node {n} runs {len(raylets)} raylets (pids "
                            f"{', '.join(str(r.get('pid')) for r in raylets)}), so Ray counts "
                            f"it more than once")
    if not (local.get(head) or {}).get("gcs_servers"):
        problems.append(f"the head {head} runs no GCS server")
    if alive is None:
        problems.append(f"`ray list nodes` on the head {head} gave no node list")
        return problems
    if len(alive) != len(nodes):
        problems.append(f"Ray counts {len(alive)} alive node(s), not {len(nodes)}")
    ips = [a["ip"] for a in alive]
    for ip in sorted({i for i in ips if ips.count(i) > 1}, key=str):
        problems.append(f"Ray lists {ip} {ips.count(ip)} times")
    want = cfg.cluster.gpus_per_node
    for a in alive:
        if a["gpus"] != want:
            problems.append(f"Ray node {a['ip']} has {a['gpus']:g} GPUs, not {want}")
    expected = [cfg.cluster.master_addr] + [cfg.cluster.hosts[nodes.index(w)]
                                            for w in cfg.cluster.workers]
    # hostnames may be listed resolved, so the addresses are compared only when all are IPs
    if all(_is_ip(x) for x in expected + ips):
        norm = sorted({str(ipaddress.ip_address(x)) for x in ips})
        if norm != sorted({str(ipaddress.ip_address(x)) for x in expected}):
            problems.append(f"Ray's nodes are {', '.join(norm)}, not this run's "
                            f"{', '.join(sorted(set(expected)))}")
    return problems


def ray_start_plan(cfg: RunConfig, local: dict, alive, started_by_run: bool) -> RayStartPlan:
    """What train does before it submits: never `ray start` on a node where Ray runs.

    - Ray runs nowhere: start it everywhere (head first).
    - Ray runs and is exactly this run's cluster (ray_cluster_problems is empty): reuse it. A
      retry after a failed job then skips a ~20 s stop and a restart.
    - Ray runs but something is off (a node missing, a node counted twice, wrong GPUs, a dead
      head): `ray stop` on every node that runs Ray, then start all of it again. A partly
      reused cluster would need the same checks after every start, for a saving of seconds.
    - Ray runs, but this run never started Ray (no attempt in its run record): it is someone
      else's. `ray stop` is host-wide, so refuse instead of stopping it.
    local: {node: raystate.py local}; alive: parse_ray_nodes() of the head, None if not read.
    """
    nodes = list(cfg.cluster.nodes)
    running = [n for n in nodes if (local.get(n) or {}).get("running")]
    if not running:
        return RayStartPlan(False, [], nodes, "no Ray runs on any node")
    if not started_by_run:
        desc = "; ".join(f"node {n} (raylet pid(s) "
                         f"{', '.join(str(r.get('pid')) for r in local[n].get('raylets') or []) or '-'})"
                         for n in running)
        raise RayError(f"Ray is already running on {desc}, and this run has not started Ray "
                           f"yet, so it belongs to someone else; stop it there (`ray stop`) if it "
                           f"is left over from an earlier run, or wait for its owner: slimeflow "
                           f"never stops what it did not start.")
    problems = ray_cluster_problems(cfg, local, alive)
    if not problems:
        return RayStartPlan(True, [], [], f"Ray already runs on all {len(nodes)} node(s) with "
                            f"{len(nodes) * cfg.cluster.gpus_per_node} GPUs, as this run "
                            f"started it")
    return RayStartPlan(False, running, nodes, "; ".join(problems))


class NodeRunner:
    """A runner over fresh NodeHooks, for when an operator is being killed: its own hooks may
    be mid-step on another thread."""

    def __init__(self, log):
        self.log, self.hooks = log, {}

    def run_step(self, cfg, step, **kw):
        from slimeflow.hooks.node import NodeHook

        kw.pop("log", None)
        hook = self.hooks.setdefault(step.node, NodeHook(ssh_conn_id=step.node))
        return hook.run(step, builders.node_dir(cfg), **kw)

    def run_json(self, cfg, step, **kw):
        return self.run_step(cfg, step, **kw).last_json()

    def close(self):
        for h in self.hooks.values():
            if getattr(h, "client", None):
                h.client.close()
        self.hooks.clear()


def on_nodes(nodes, fn) -> dict:
    """fn(node) on every node at once; results by node, first failure re-raised."""
    nodes = list(nodes)
    if len(nodes) <= 1:
        return {n: fn(n) for n in nodes}
    with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
        futures = {n: pool.submit(fn, n) for n in nodes}
        return {n: f.result() for n, f in futures.items()}


class RayClusterHook:
    """Ray on the nodes of one run config, through `runner` (see the module docstring)."""

    # overridable in tests: the submit retry never waits for real there
    _clock = staticmethod(time.monotonic)
    _sleep = staticmethod(time.sleep)

    def __init__(self, cfg, runner, log):
        self.cfg, self.runner, self.log = cfg, runner, log
        self.stop_errors = {}  # node: why its last `ray stop` failed

    def _step(self, step, **kw):
        return self.runner.run_step(self.cfg, step, **kw)

    def _json(self, step, **kw):
        return self.runner.run_json(self.cfg, step, **kw)

    # -- what runs ------------------------------------------------------------------------

    def job_state(self, sub_id):
        """A Ray job state, None when Ray does not know the job, 'NO_CLUSTER' without Ray.

        Read on the head by `raystate.py job` (the Jobs REST API, the reader jobwatch's polls
        use) instead of `ray job status`, which imports Ray for one GET. A dead dashboard with
        a live GCS is refused: the job may still run, and resubmitting or restarting Ray there
        would kill it."""
        cfg = self.cfg
        res = self._json(builders.ray_job_state(cfg, sub_id), timeout=120)
        state = res.get("status")
        if state == "MISSING":  # HTTP 404 "Job ID does not exist"
            return None
        if state == "DASHBOARD_DOWN":
            raise RayError(
                f"Ray's dashboard on node {cfg.cluster.head} does not answer but its GCS does "
                f"({res.get('text')}), so slimeflow cannot tell whether job {sub_id} still "
                f"runs; look at dashboard.log in the head's Ray session logs, or run `ray stop` "
                f"on every node (a running job then loses its work since its last checkpoint), "
                f"then clear the task.")
        return state if state and state not in ("NO_CLUSTER", "UNKNOWN") else "NO_CLUSTER"

    def free_attempt_id(self, base_id, n):
        """The first `<base_id>-a<k>`, k >= n, that Ray does not know."""
        while self.job_state(f"{base_id}-a{n}") not in (None, "NO_CLUSTER"):
            n += 1
        return f"{base_id}-a{n}"

    def local_states(self, nodes) -> dict:
        """{node: raystate.py local} (raylets and GCS servers running there), all at once."""
        return on_nodes(nodes, lambda n: self._json(builders.ray_node_state(self.cfg, n),
                                                    timeout=60))

    def alive_nodes(self):
        """parse_ray_nodes() of the head's `ray list nodes`, None when it gave no list."""
        res = self._step(builders.ray_list_nodes(self.cfg), check=False, log=None, timeout=120)
        return parse_ray_nodes(res.stdout) if res.rc == 0 else None

    # -- starting -------------------------------------------------------------------------

    def ensure_cluster(self, ours: bool, before_start, secret_env=None) -> RayStartPlan:
        """Ray on every node, never a second raylet: a real `ray start --address` on a node
        that already runs Ray starts another raylet (and the cluster counts the node twice),
        and `ray start --head` on a running head refuses. Every node is asked first, and
        ray_start_plan decides: reuse, stop then start, or refuse (not this run's Ray).
        `before_start()` runs once before anything is stopped or started (the run record
        notes that the Ray on these nodes is this run's from then on)."""
        cfg = self.cfg
        head, nodes = cfg.cluster.head, list(cfg.cluster.nodes)
        local = self.local_states(nodes)
        alive = self.alive_nodes() if (local.get(head) or {}).get("running") else None
        plan = ray_start_plan(cfg, local, alive, ours)
        if plan.reuse:
            self.log.info("[%s] reusing Ray: %s (ray list nodes)", head, plan.reason)
            return plan
        before_start()
        if plan.stop:
            self.log.warning("[%s] Ray runs on %s but cannot be reused (%s): `ray stop` there "
                             "first, then start Ray on every node", head,
                             ", ".join(plan.stop), plan.reason)
            rcs = self.stop_nodes(plan.stop)
            left = {n: st for n, st in self.local_states(plan.stop).items()
                    if st.get("running")}
            if left:
                n, st = next(iter(left.items()))
                pids = [r.get("pid") for r in st.get("raylets") or []] + list(
                    st.get("gcs_servers") or [])
                raise RayError(
                    f"`ray stop` on node {n} (exit {rcs.get(n)}) left Ray processes running "
                    f"(pids {', '.join(map(str, pids))}); run `ray stop --force` there, then "
                    f"clear the train task.")
        # secrets (W&B key) ride in the head's environment via runner.py's stdin: every job
        # inherits them, and they never appear in --runtime-env-json or any other argv
        res = self._step(builders.ray_start_head(cfg, secret_env=secret_env), check=False,
                         timeout=300)
        if res.rc != 0:
            raise RayError(f"`ray start --head` failed on node {head} (exit {res.rc}): "
                           f"{' | '.join(res.tail[-6:])}; check master_addr and that ports "
                           f"6379/8265 are free.")

        def worker(node):
            r = self._step(builders.ray_start_worker(cfg, node), check=False, timeout=300)
            if r.rc != 0:
                raise RayError(
                    f"`ray start` on worker node {node} could not join {cfg.cluster.master_addr}"
                    f":6379 (exit {r.rc}): {' | '.join(r.tail[-4:])}; check that the worker "
                    f"can reach master_addr and that socket_ifname is right.")
        on_nodes([n for n in plan.start if n != head], worker)
        return plan

    # -- jobs -----------------------------------------------------------------------------

    def submit(self, sub_id, facts):
        """`ray job submit --no-wait`; retries only "No available agent", for SUBMIT_RETRY_S."""
        cfg = self.cfg
        try:
            step = builders.ray_job_submit(cfg, sub_id, facts)
        except ValueError as e:  # a Ray version we cannot quote for
            raise RayError(str(e)) from None
        self.log.info("runtime env: %s", json.dumps(step.runtime_env))
        self.log.info("entrypoint (what train.py receives): %s",
                      " ".join(builders.train_entrypoint(cfg, facts)))
        deadline = self._clock() + SUBMIT_RETRY_S
        retried = False
        while True:
            res = self._step(step, check=False, timeout=300)
            if res.rc == 0:
                return
            why = submit_failure(res.stdout + "\n" + res.stderr, sub_id)
            if why == "exists" and retried:
                # a submit that timed out inside Ray can still have created the job; the id is
                # this attempt's own, so it is the job we asked for
                self.log.info("[%s] job %s exists after a retried submit: it was submitted",
                              cfg.cluster.head, sub_id)
                return
            if why == "no_agent" and self._clock() < deadline:
                self.log.warning("[%s] Ray's job agent is not up yet (HTTP 500: No available "
                                 "agent to submit job); retrying `ray job submit` in %d s (for "
                                 "up to %d s)", cfg.cluster.head, SUBMIT_RETRY_PAUSE_S,
                                 SUBMIT_RETRY_S)
                retried = True
                self._sleep(SUBMIT_RETRY_PAUSE_S)
                continue
            hint = (f"; Ray's job agent on the head did not come up within {SUBMIT_RETRY_S} s: "
                    f"look at dashboard_agent.log under the head's Ray session logs"
                    if why == "no_agent" else "")
            raise RayError(f"`ray job submit` failed on node {cfg.cluster.head} (exit "
                           f"{res.rc}): {' | '.join(res.tail[-6:])}{hint}")

    def stop_job(self, sub_id, wait=True, timeout=900) -> int:
        """`ray job stop`; wait=False only sends the request (a hung trainer may never honour
        SIGTERM, and the caller's time is better spent on `ray stop`)."""
        step = builders.ray_job_cmd(self.cfg, "stop", sub_id)
        if not wait:
            step.argv.append("--no-wait")
        res = self._step(step, check=False, timeout=timeout, log=None)
        self.log.info("[%s] ray job stop %s%s: exit %d", self.cfg.cluster.head, sub_id,
                      "" if wait else " --no-wait", res.rc)
        return res.rc

    # -- stopping -------------------------------------------------------------------------

    def stop_nodes(self, nodes) -> dict:
        """`ray stop` on every node at once, each with RAY_STOP_TIMEOUT_S (see
        docs/benchmarks.md: real `ray stop` with a job running takes seconds to tens of
        seconds); {node: exit code}, -1 where the node could not be reached."""
        def stop(node):
            try:
                res = self._step(builders.ray_stop(self.cfg, node), check=False,
                                 timeout=builders.RAY_STOP_TIMEOUT_S)
            except Exception as e:  # one unreachable node must not keep the others running
                self.stop_errors[node] = str(e)
                self.log.warning("[%s] ray stop failed: %s", node, e)
                return -1
            if res.rc != 0:
                self.stop_errors[node] = " | ".join(res.tail[-3:]) or f"exit {res.rc}"
                self.log.warning("[%s] ray stop exited %d: %s", node, res.rc,
                                 self.stop_errors[node])
            return res.rc
        return on_nodes(nodes, stop)
