"""Many machines: one distributed map over audio files on Ray Data, for infer.py and train.py's caches.

`RayEngine.map` runs a function over items (files, or feature jobs) on the workers of a Ray
cluster: an embedded one on this machine by default, or an existing cluster joined by its
address (``ray start --head`` on one machine, ``ray start --address`` on the others). Each
worker builds its function once (`map`'s ``make_function``: a model is loaded once per
worker, not once per file) and returns its results to the driver, which writes them: no
worker needs to write where the driver reads. Files are read where they are, so the audio
the run folder and this project must be at the same path on every node (a shared file system).

Ray is optional (`INSTALL`); without it `RayEngine` says how to install it.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from errors import UsageError
from files import PROJECT_ROOT, installed

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")  # local: this machine's process pool and threads; ray: `RayEngine`
INSTALL = "pip install -r requirements-ray.lock"  # the user's versions plus Ray Data's (requirements-ray.txt holds the ranges)
CONNECT_SECONDS = 5.0  # to reach a cluster's head before saying nothing answers
WORKERS_START_SECONDS = 600  # for every worker to start and load its model before a map gives up
MAX_BLOCKS = 10_000  # Ray Data blocks a map's items are cut into, at most


class ClusterError(Exception):
    """Work on the cluster that failed (a worker's error, a cluster that went away); the message says what."""


class RayEngine:
    """A connection to a Ray cluster for `map`; ``with RayEngine(address) as engine:`` disconnects at the end.

    Parameters
    ----------
    address : str or None
        ``HOST:PORT`` of a running cluster's head (``ray start --head`` prints it), or None
        for ``$RAY_ADDRESS`` or else an embedded cluster of this machine's cores, started here
        and stopped at the end. A Ray this process has joined already (``ray.init`` by the
        caller) is used as it is, whatever the address, and left running.
    workers : int or None
        Workers the map runs on, one CPU each (default: every CPU of the cluster).
    verbose : bool
        Show Ray's own logs and its workers' output.

    Raises
    ------
    UsageError
        Ray is not installed, or nothing answers at ``address``.
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None, verbose: bool = False) -> None:
        if not installed("ray"):
            raise UsageError(f"--engine ray needs Ray Data: {INSTALL}")
        import ray
        import ray.data

        # Ray's own start-up lines and per-operator progress bars: this project shows one bar of files instead
        # (the command lines keep its core's C++ log lines off stderr: `cli.LIBRARY_NOISE`).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if not verbose:
            for name in ("ray", "ray.data"):  # Ray Data's logger has a stderr handler of its own
                logging.getLogger(name).setLevel(logging.ERROR)
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        # "local" starts a Ray of this machine: without it Ray would join a cluster an earlier `ray start` left on record.
        problem = None if address == "local" else _unreachable(address)
        self.owned = not ray.is_initialized()  # joined here, so left here
        if problem is None and self.owned:
            try:
                ray.init(
                    address=address, include_dashboard=False, log_to_driver=verbose,
                    logging_level=logging.INFO if verbose else logging.WARNING,
                    # The workers import this project's modules (what `map` sends names them) from where it is here.
                    runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}},
                )
            except ConnectionError as error:
                problem = str(error)
        if problem is not None:
            raise UsageError(f"--address {address}: no Ray cluster answers there ({problem}); "
                             "start one with ray start --head, or drop --address for one on this machine")
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = verbose
        context.print_on_execution_start = verbose
        # Every worker ready (its model loaded) before the first call goes out: the calls then spread over all of them.
        context.wait_for_min_actors_s = WORKERS_START_SECONDS
        self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.nodes: Counter[str] = Counter()  # items mapped per node (its address), over every `map`

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        import ray

        if self.owned:
            ray.shutdown()

    def map(
        self, items: Sequence[Any], make_function: Callable[[], Callable[[list], list]], *, items_per_call: int = 1
    ) -> Iterator[list[Any]]:
        """``make_function()(items)``, spread over the workers: the results of each call as it finishes.

        Parameters
        ----------
        items : sequence
            Picklable items; each call gets up to ``items_per_call`` of them.
        make_function : callable
            Picklable (a module-level function or a `functools.partial` of one): called once
            on each worker, it returns the function a call runs, items -> one result each.
        items_per_call : int > 0

        Yields
        ------
        results : list
            The results of a finished call (or of several that finished together), in the
            order of their items; calls arrive in the order they finish, not the items'. A
            worker that dies is started again and its call run again.
        """
        if not items:
            return
        import ray.data

        calls = -(-len(items) // items_per_call)
        # A block per call, so that every worker gets work from the start (up to MAX_BLOCKS, where Ray's planning grows slow).
        dataset = ray.data.from_items([{"item": pickle.dumps(item)} for item in items], override_num_blocks=min(calls, MAX_BLOCKS))
        workers = min(self.workers, calls)
        mapped = dataset.map_batches(
            _Worker, fn_constructor_args=(make_function,), batch_size=items_per_call, batch_format="numpy",
            # One call in flight per worker: a call queued behind a slow one would wait for it while other workers idle.
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1), num_cpus=1,
        )
        try:
            # No prefetching: with it, Ray held a finished call back until a slower one before it was done.
            for batch in mapped.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                self.nodes.update(batch["node"].tolist())
                yield [pickle.loads(result) for result in batch["result"]]
        except ray.exceptions.RayError as error:
            # Ray's message is the worker's whole traceback; its last line says what failed.
            cause = str(error).strip().splitlines()[-1]
            raise ClusterError(f"a Ray worker failed ({cause}); what finished before is kept") from None


class _Worker:
    """One Ray worker: builds its function once, then maps calls of pickled items to pickled results and its node."""

    def __init__(self, make_function: Callable[[], Callable[[list], list]]) -> None:
        import ray

        self.function = make_function()
        self.node = ray.util.get_node_ip_address() + ":" + ray.get_runtime_context().get_node_id()[:8]

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        results = self.function([pickle.loads(item) for item in batch["item"]])
        return {"result": [pickle.dumps(result) for result in results], "node": [self.node] * len(results)}


def _unreachable(address: str) -> str | None:
    """Why nothing listens at a ``HOST:PORT`` address (None: something does, or the address is of another form).

    Ray itself waits for minutes before it gives up on an address where nothing listens.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in host:
        return None
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        return error.strerror or str(error)
    return None


def nodes_summary(nodes: Counter[str], what: str = "files") -> str:
    """How the work spread, for the end of a run: ``"3 files on 2 nodes (a 2, b 1)"`` (a single item is "1 file")."""
    parts = ", ".join(f"{node} {count}" for node, count in nodes.most_common())
    items, count = sum(nodes.values()), len(nodes)
    return f"{items} {what if items != 1 else what.removesuffix('s')} on {count} node{'s' * (count != 1)} ({parts})"
