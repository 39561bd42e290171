"""Data-parallel training on several processes: jax.distributed, momentum_jax and orbax.

Trains a small MLP on scikit-learn's bundled 8x8 digits (no download) with
``momentum_jax.momentum``. Every process runs this same program: all
processes' devices form one mesh, each process feeds its own rows of every
minibatch, and the gradients are averaged across processes inside the jitted
step. Params and optimizer state are checkpointed with orbax every
``--save-every`` steps (every process takes part in each save); run again with
the same ``--out`` to resume from the latest complete checkpoint.

    python examples/multihost.py --processes 2     # 2 local processes, 4 CPU devices each
    python examples/multihost.py --cluster         # on each host of a cluster (SLURM, ...)
    python examples/multihost.py --coordinator HOST:PORT --num-processes N --process-id I

Without ``--cluster`` or ``--coordinator`` the script is a launcher: it starts
``--processes`` copies of itself on this machine, each with
``--devices / --processes`` simulated CPU devices, joined through a
coordinator on 127.0.0.1, and waits for them (at most ``--timeout`` seconds).
"""

from __future__ import annotations

import argparse
import inspect
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common

NAME = "multihost"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _common.parser(__doc__)
    where = parser.add_argument_group("where the processes run (the default: launch them here)")
    where.add_argument(
        "--processes", type=int, default=2, help="local processes to launch (launcher mode)"
    )
    where.add_argument(
        "--devices",
        type=int,
        default=8,
        help="simulated CPU devices in all, shared evenly by the local processes",
    )
    where.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds the launcher waits for its processes before killing them",
    )
    where.add_argument(
        "--cluster",
        action="store_true",
        help="join a cluster: jax.distributed.initialize() with no arguments, which reads "
        "the coordinator, process count and index from SLURM, Open MPI, Kubernetes or Cloud TPU",
    )
    where.add_argument(
        "--coordinator",
        help="join explicitly: HOST:PORT of process 0's coordinator, with --num-processes and "
        "--process-id (default: none, launch --processes local processes)",
    )
    where.add_argument(
        "--num-processes",
        type=int,
        help="processes in all (default: none; needed with --coordinator)",
    )
    where.add_argument(
        "--process-id",
        type=int,
        help="this process's index, 0 to N-1 (default: none; needed with --coordinator)",
    )
    where.add_argument(
        "--bind-address",
        help="HOST:PORT process 0's coordinator listens on, with --coordinator (default: every "
        "interface, at the coordinator's port)",
    )
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=int, default=200, help="training steps in all")
    train.add_argument(
        "--batch-size", type=int, default=128, help="global minibatch, split over the devices"
    )
    train.add_argument("--learning-rate", type=float, default=0.05, help="of momentum_jax.momentum")
    train.add_argument("--momentum", type=float, default=0.9, help="of momentum_jax.momentum")
    train.add_argument("--hidden", type=int, default=64, help="width of the hidden layer")
    train.add_argument(
        "--zero1",
        action="store_true",
        help="split the velocity over the devices (ZeRO stage 1) instead of replicating it",
    )
    train.add_argument(
        "--seed", type=int, default=0, help="seed of the data split, the weights and the batches"
    )
    train.add_argument("--log-every", type=int, default=20, help="steps between printed losses")
    train.add_argument("--save-every", type=int, default=50, help="steps between orbax checkpoints")
    train.add_argument(
        "--out",
        type=Path,
        help="output folder: checkpoints/ and the launcher's logs/ (default: "
        f"examples/out/{NAME}/); on a cluster, storage every host can reach",
    )
    args = parser.parse_args(argv)
    if args.coordinator and (args.num_processes is None or args.process_id is None):
        parser.error("--coordinator needs --num-processes and --process-id")
    if args.devices % args.processes:
        parser.error("--devices must be a multiple of --processes")
    return args


# --- the launcher -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _forward(stream: Any) -> None:
    """Process 0's output, less gloo's connection messages."""
    for line in iter(stream.readline, b""):
        if not line.startswith(b"[Gloo]"):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()


def launch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Start ``--processes`` copies of this script on 127.0.0.1 and wait for all of them."""
    out = _common.out_dir(NAME, False, args.out)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    flags = os.environ.get("XLA_FLAGS", "")
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count="
        f"{args.devices // args.processes}".strip(),
    }
    procs = []
    for index in range(args.processes):
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            *argv,
            "--out",
            str(out),
            "--coordinator",
            address,
            "--bind-address",
            address,  # listen on the loopback interface only
            "--num-processes",
            str(args.processes),
            "--process-id",
            str(index),
        ]
        log = (logs / f"process-{index}.log").open("wb")
        # Process 0 prints the losses; everything else goes to its log.
        stdout = subprocess.PIPE if index == 0 else log
        procs.append(subprocess.Popen(command, env=env, stdout=stdout, stderr=log))
        log.close()
    forward = threading.Thread(target=_forward, args=(procs[0].stdout,), daemon=True)
    forward.start()
    deadline = time.monotonic() + args.timeout
    failed, why = None, ""
    while failed is None and not all(proc.poll() == 0 for proc in procs):
        codes = [proc.poll() for proc in procs]
        failed = next((i for i, code in enumerate(codes) if code not in (None, 0)), None)
        if failed is not None:
            why = f"exit {codes[failed]}"
        elif time.monotonic() > deadline:
            failed, why = codes.index(None), f"still running after --timeout {args.timeout:g} s"
        time.sleep(0.1)
    for proc in procs:  # a failed process leaves the others waiting for it
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    forward.join(timeout=10)
    if failed is None:
        return 0
    log = logs / f"process-{failed}.log"
    print(f"process {failed} failed ({why}); the end of {log}:", file=sys.stderr)
    print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
    return 1


# --- one process of the run -----------------------------------------------------------


def join(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize``, with what each supported JAX version needs."""
    import jax

    # Collectives across processes on CPU: up to JAX 0.5.0 the default is
    # 'none' (there are none); from 0.5.1 it is gloo (read as None in some
    # releases, which then picks gloo). GPUs use NCCL and need nothing.
    if jax.config.values.get("jax_cpu_collectives_implementation") in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.cluster:
        jax.distributed.initialize()
        return
    kwargs: dict[str, Any] = {
        "coordinator_address": args.coordinator,
        "num_processes": args.num_processes,
        "process_id": args.process_id,
    }
    if args.bind_address:
        kwargs["coordinator_bind_address"] = args.bind_address
    accepted = inspect.signature(jax.distributed.initialize).parameters
    if "heartbeat_timeout_seconds" in accepted:  # JAX 0.7 and later; 100 s by default
        kwargs["heartbeat_timeout_seconds"] = 30
    jax.distributed.initialize(**kwargs)


def train(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import momentum_jax

    join(args)
    main_process = jax.process_index() == 0
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P("data"))
    n = mesh.size
    if args.batch_size % n:
        raise SystemExit(f"--batch-size {args.batch_size} is not a multiple of {n} devices")

    x_train, y_train, x_test, y_test = _common.load_digits(args.seed)
    optimizer = momentum_jax.momentum(args.learning_rate, args.momentum)

    # Every process builds the same params (same seed), replicated on the mesh.
    params = jax.jit(
        lambda key: _common.init_mlp(key, (x_train.shape[1], args.hidden, 10)),
        out_shardings=replicated,
    )(jax.random.key(args.seed))

    def state_layout(leaf: Any) -> NamedSharding:
        # ZeRO-1: each buffer split along its first axis where that divides evenly.
        if args.zero1 and leaf.ndim and leaf.shape[0] % n == 0:
            return NamedSharding(mesh, P("data"))
        return replicated

    state_sharding = jax.tree.map(state_layout, jax.eval_shape(optimizer.init, params))
    opt_state = jax.jit(optimizer.init, out_shardings=state_sharding)(params)

    def apply_grads(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        # x and y are split over the devices of every process; the mean in the
        # loss makes the gradient an average over the global batch.
        loss, grads = jax.value_and_grad(_common.cross_entropy)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step_fn = jax.jit(
        apply_grads,
        in_shardings=(replicated, state_sharding, rows, rows),
        out_shardings=(replicated, state_sharding, replicated),
        donate_argnums=(0, 1),
    )
    evaluate = jax.jit(
        lambda params, x, y: jnp.mean(jnp.argmax(_common.logits(params, x), -1) == y),
        out_shardings=replicated,
    )

    directory = (_common.out_dir(NAME, False, args.out) / "checkpoints").absolute()
    manager = ocp.CheckpointManager(directory)
    first = 0
    latest = manager.latest_step()
    if latest is not None:
        # The target: the structure, dtypes and shardings of the state built above.
        target = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            {"params": params, "opt_state": opt_state},
            {"params": jax.tree.map(lambda _: replicated, params), "opt_state": state_sharding},
        )
        restored = manager.restore(latest, args=ocp.args.StandardRestore(target))
        params, opt_state = restored["params"], restored["opt_state"]
        first = latest
        if main_process:
            print(f"resumed from the checkpoint of step {latest} in {directory}")
            if latest >= args.steps:
                print(f"  step {latest} is not before --steps {args.steps}: nothing to train")

    count, index = jax.process_count(), jax.process_index()
    share = args.batch_size // count  # each process's rows of every minibatch
    losses = {}
    for step in range(first, args.steps):
        # The same indices on every process; each takes its own slice.
        batch = np.random.default_rng((args.seed, step)).choice(
            len(x_train), args.batch_size, replace=False
        )[index * share : (index + 1) * share]
        x = jax.make_array_from_process_local_data(rows, x_train[batch])
        y = jax.make_array_from_process_local_data(rows, y_train[batch])
        params, opt_state, loss = step_fn(params, opt_state, x, y)
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            losses[done] = float(loss.addressable_data(0))
            if main_process:
                print(f"step {done:5d}  minibatch loss {losses[done]:.4f}", flush=True)
        if done % args.save_every == 0 or done == args.steps:
            # Every process calls save, each writing its own shards.
            state = {"params": params, "opt_state": opt_state}
            manager.save(done, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    manager.close()
    accuracy = float(evaluate(params, x_test, y_test).addressable_data(0))
    if main_process:
        print(
            f"{count} process(es), {jax.device_count()} devices: test accuracy {accuracy:.3f} "
            f"after {max(first, args.steps)} steps; checkpoints in {directory}"
        )
    return {"losses": losses, "accuracy": accuracy, "first_step": first}


def main(argv: Sequence[str] | None = None) -> Any:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.cluster or args.coordinator:
        return train(args)
    return launch(args, argv)


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
