"""The Ray executor: records computed by a pool of actors, written by the driver.

``run_lens(..., executor="ray", workers=N)`` (``shiftlens run ... --executor ray --workers N``)
starts ``N`` actors. Each holds the model of one role at a time, loaded lazily by the first task
that needs it (and freed before the other role's model is loaded), so a worker's peak memory is
one model, and an actor that Ray restarts after a failure simply loads its model again. The
driver keeps one task in flight per actor and hands the next record to whichever actor
finishes: a queue, so fast and slow workers balance. An actor keeps to the model it holds while
that role has records left, and idle actors spread over the roles, so two workers compute the
base and the tuned records side by side with one model load each. Actors are
created with ``max_restarts`` and ``max_task_retries``: when one dies (killed, out of memory, a
lost node) Ray restarts it and reruns its unfinished record; should it die more often than
that, its record goes back into the queue for the other actors. Records travel back to the
driver as the bytes of their record file (no pickle of tensors) and the driver writes them, so
the workers need no shared filesystem. One progress bar with ETA counts records over all
workers.

Ray is optional: ``pip install 'shiftlens[ray]'``.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from shiftlens.checks import prompt_id
from shiftlens.errors import ShiftlensError

__all__ = ["execute_ray", "require_ray", "check_resources"]

_INSTALL = "pip install 'shiftlens[ray]'"


def require_ray() -> Any:
    """Import Ray, or raise a :class:`ShiftlensError` saying how to install it.

    Example:
        >>> ray = require_ray()  # doctest: +SKIP
    """
    try:
        import ray
    except ImportError as e:
        raise ShiftlensError(f"the Ray executor needs Ray, which is not installed ({e}); "
                             f"install it with: {_INSTALL}") from e
    return ray


class _Worker:
    """One Ray actor: the units, how to load the models, at most one role resident."""

    def __init__(self, units: Any, info: dict[str, Any], spec: dict[str, Any],
                 threads: int) -> None:
        import torch

        from shiftlens.runner.execute import _Source
        from shiftlens.runner.store import RunStore

        if threads > 0:
            torch.set_num_threads(threads)
        self.units = units
        self.store = RunStore(Path("."), info)  # encodes and decodes only; writes nothing
        self.source = _Source.from_spec(spec)
        self.role: str | None = None
        self.held: Any = None
        self.model: Any = None
        self.view: Any = None
        self.plan: tuple[str, Any, list[Any], dict[str, Any]] | None = None

    def _resident(self, role: str) -> Any:
        from shiftlens.runner.execute import _view_signature, check_signature

        if self.role != role:
            self._release()
            cm = self.source.resident(role)
            self.model, self.view = cm.__enter__()
            self.held, self.role = cm, role
            if self.plan is not None:
                check_signature(self.plan[3].get("signature"), _view_signature(self.view),
                                self.source.names)
        return self.model

    def _release(self) -> None:
        if self.held is not None:
            self.model = self.view = None
            cm, self.held, self.role = self.held, None, None
            cm.__exit__(None, None, None)

    def make_plan(self, role: str, prompts: list[dict[str, Any]], params: dict[str, Any]
                  ) -> bytes:
        from shiftlens.prompts import InstructionPrompt
        from shiftlens.runner.execute import _view_signature

        self._resident(role)
        ps = [InstructionPrompt.from_dict(d) for d in prompts]
        value = self.units.plan(self.view, ps, **params)
        return self.store.encode_plan(value, ps, _view_signature(self.view))

    def compute(self, role: str, index: int, plan_box: tuple[str, list[Any]]) -> bytes:
        import ray

        from shiftlens.runner.execute import _view_signature, check_signature

        digest, (ref,) = plan_box
        if self.plan is None or self.plan[0] != digest:
            self.plan = self.store._decode_plan(ray.get(ref), "the run's plan")
            if self.view is not None:
                check_signature(self.plan[3].get("signature"), _view_signature(self.view),
                                self.source.names)
        model = self._resident(role)
        _, plan, prompts, _ = self.plan
        record = self.units.compute(plan, role, model, prompts[index], index)
        return self.store.encode_record(index, role, record, digest,
                                        prompt_id(prompts[index], index))

    def pid(self) -> int:
        import os

        return os.getpid()


class _Scheduler:
    """Which record each idle actor computes next.

    One queue per role (prompt order). An actor keeps to the role whose model it holds while
    that role has work. An actor without work for its model (or without a model) takes the
    role the fewest other actors hold (the one with the most work left first), so with two
    workers one computes the base records and the other the tuned ones: two model loads, not
    four. At the tail an actor switches to the other role only when no actor holds it, or when
    the measured times say the switch pays: a model load (``L``, the first record after a load
    minus a plain record's time ``C``) costs less than the time it saves the actors already on
    that role, ``remaining * C / (n * (n + 1))``. Before anything is measured it switches.
    """

    def __init__(self, todo: list[tuple[int, str]], roles: tuple[str, ...], workers: int,
                 clock: Any = None) -> None:
        import time

        self.clock = clock or time.monotonic
        self.roles = roles
        self.queues: dict[str, deque[int]] = {r: deque() for r in roles}
        for i, role in todo:
            self.queues[role].append(i)
        self.holds: dict[int, str | None] = dict.fromkeys(range(workers))
        self.alive = set(range(workers))
        self.busy: dict[int, tuple[float, bool]] = {}  # actor -> (dispatched at, loads a model)
        self.compute_times: list[float] = []
        self.load_times: list[float] = []

    def idle(self) -> list[int]:
        return sorted(self.alive - set(self.busy))

    def _pays(self, role: str, a: int) -> bool:
        n = sum(1 for b in self.alive if b != a and self.holds[b] == role)
        if n == 0 or not self.compute_times or not self.load_times:
            return True
        c = sorted(self.compute_times)[len(self.compute_times) // 2]
        load = max(0.0, sorted(self.load_times)[len(self.load_times) // 2] - c)
        return load < len(self.queues[role]) * c / (n * (n + 1))

    def _role_for(self, a: int) -> str | None:
        cur = self.holds[a]
        if cur is not None and self.queues[cur]:
            return cur
        open_roles = [r for r in self.roles if self.queues[r] and self._pays(r, a)]
        if not open_roles:
            return None
        others = [self.holds[b] for b in self.alive if b != a]
        return min(open_roles, key=lambda r: (others.count(r), -len(self.queues[r]),
                                              self.roles.index(r)))

    def take(self, a: int) -> tuple[int, str] | None:
        """The next ``(index, role)`` for idle actor ``a`` (None: nothing worth doing now)."""
        role = self._role_for(a)
        if role is None:
            return None
        self.busy[a] = (self.clock(), self.holds[a] != role)
        self.holds[a] = role
        return self.queues[role].popleft(), role

    def done(self, a: int) -> None:
        t0, loaded = self.busy.pop(a)
        (self.load_times if loaded else self.compute_times).append(self.clock() - t0)

    def dead(self, a: int, key: tuple[int, str]) -> None:
        self.busy.pop(a, None)
        self.alive.discard(a)
        self.holds[a] = None
        self.queues[key[1]].appendleft(key[0])

    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())


def check_resources(source: Any, workers: int, gpus: float, cpus: float, restarts: int) -> None:
    """Refuse Ray settings that cannot work, before anything is started or written.

    Example:
        >>> check_resources(source, 2, 1, 1, 3)  # doctest: +SKIP
    """
    for name, v, lo in (("workers", workers, 1), ("max_restarts", restarts, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ShiftlensError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not gpus >= 0 or not cpus > 0:
        raise ShiftlensError(f"gpus_per_worker must be >= 0 and cpus_per_worker > 0, got "
                             f"{gpus!r} and {cpus!r}")
    device = str(source.device or "cpu")
    uses_map = bool(source.load_kwargs.get("device_map") or
                    source.load_kwargs.get("n_devices"))
    if gpus > 0 and not device.startswith("cuda") and not uses_map:
        raise ShiftlensError(f"gpus_per_worker={gpus} with device {device!r}: pass "
                             "device='cuda' (--device cuda) so the workers use their GPUs")
    if device.startswith("cuda:"):
        raise ShiftlensError(f"device {device!r} with Ray: each worker sees only the GPUs Ray "
                             "gives it (as cuda:0, ...); pass device='cuda'")
    if device.startswith("cuda") and gpus == 0:
        raise ShiftlensError("device='cuda' with Ray needs gpus_per_worker > 0 (Ray hides the "
                             "GPUs from actors that reserve none)")


def _remote_error(e: Any, key: tuple[int, str], ctx: Any) -> ShiftlensError:
    cause = getattr(e, "cause", None)
    what = f"prompt {ctx.ids[key[0]]!r} ({key[1]})"
    if isinstance(cause, ShiftlensError):
        return ShiftlensError(f"{what}: {cause}")
    detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(e).splitlines()[0]
    return ShiftlensError(f"{what} failed on a Ray worker: {detail}")


def execute_ray(ctx: Any, todo: list[tuple[int, str]], bar: Any, *, workers: int = 1,
                gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
                max_restarts: int = 3, address: str | None = None) -> int:
    """Compute the ``todo`` records of a run on a Ray actor pool (see the module docstring).

    Called by :func:`shiftlens.runner.run_lens` with ``executor="ray"``; joins the Ray cluster
    that is initialised, else ``ray.init(address)`` (and shuts it down after).

    Returns:
        The number of records computed and written.

    Example:
        >>> run_lens("attribution", dirs, prompts, "runs/s", executor="ray", workers=4)  # doctest: +SKIP
    """
    ray = require_ray()
    from ray.exceptions import RayActorError, RayTaskError

    check_resources(ctx.source, workers, gpus_per_worker, cpus_per_worker, max_restarts)
    spec = ctx.source.spec()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False)
    actors: list[Any] = []
    try:
        actor_cls = ray.remote(_Worker)
        opts = {"num_cpus": cpus_per_worker, "num_gpus": gpus_per_worker,
                "max_restarts": max_restarts, "max_task_retries": max_restarts}
        threads = max(1, int(cpus_per_worker))
        actors = [actor_cls.options(**opts).remote(ctx.units, ctx.store.info, spec, threads)
                  for _ in range(workers)]
        bar.set_postfix_str(f"planning on a {todo[0][1]} worker", refresh=True)
        try:
            data = ray.get(actors[0].make_plan.remote(
                todo[0][1], [p.to_dict() for p in ctx.prompts], ctx.params))
        except RayTaskError as e:
            raise _remote_error(e, (0, todo[0][1]), ctx) from e
        digest = ctx.publish(data)[0]
        box = (digest, [ray.put((ctx.store.path / ctx.store.PLAN).read_bytes())])

        sched = _Scheduler(todo, ctx.units.roles, workers)
        sched.holds[0] = todo[0][1]  # the planning actor has that model loaded
        inflight: dict[Any, tuple[int, tuple[int, str]]] = {}
        deaths: list[str] = []

        def feed() -> None:
            for a in sched.idle():
                key = sched.take(a)
                if key is not None:
                    inflight[actors[a].compute.remote(key[1], key[0], box)] = (a, key)

        computed = 0
        feed()
        while inflight:
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            a, key = inflight.pop(ref)
            try:
                data = ray.get(ref)
            except RayActorError as e:  # restarts and retries exhausted: requeue elsewhere
                sched.dead(a, key)
                deaths.append(str(e).splitlines()[0])
                if not sched.alive:
                    raise ShiftlensError(
                        f"every Ray worker died ({len(deaths)} deaths, last: {deaths[-1]}); "
                        f"{computed} records were written; rerun with --resume") from e
                feed()
                continue
            except RayTaskError as e:
                raise _remote_error(e, key, ctx) from e
            sched.done(a)
            i, role = key
            ctx.store.decode_record(i, role, data, digest)  # check before publishing
            ctx.store.write_record(i, role, data)
            computed += 1
            bar.set_postfix_str(f"{len(sched.alive)} workers", refresh=False)
            bar.update(1)
            feed()
        if sched.pending():  # pragma: no cover - the scheduler always keeps a holder busy
            raise ShiftlensError(f"internal error: {sched.pending()} records left unscheduled")
        return computed
    finally:
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if started:
            ray.shutdown()
