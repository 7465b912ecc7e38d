"""api.py's OpenAI server as replicas on Ray Serve, a chat's turns kept on one replica:

    python deploy/ray_serve.py --hf_model_dir ... --onnx_model_path ... --replicas 2

It takes api.py's model and server flags, plus where the replicas run and how many. Without --address it
starts Ray on this machine; with --address auto it joins the cluster `ray start` made (docs/ray.md).
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import dataclass

from config import InferenceConfig, ServerOptions, add_model_args
from core.errors import UserError, run_main
from core.flags import ArgumentParser, add_flags, from_args, option

APP_NAME = "qwen"


@dataclass
class RayOptions:
    address: str | None = option(
        None, help="the Ray cluster to join: auto (the one `ray start` made on this machine) or HEAD_IP:6379 "
                   "(default: start Ray on this machine for this run)")
    replicas: int | None = option(None, help="a fixed number of replicas (default 1 unless --max_replicas is given)")
    min_replicas: int | None = option(None, help="autoscaling: fewest replicas (default 1)")
    max_replicas: int | None = option(
        None, help="autoscaling: most replicas; Ray Serve adds one when the requests in flight per replica exceed "
                   "--target_ongoing_requests and removes one when they fall below")
    target_ongoing_requests: float = option(2.0, help="autoscaling: requests in flight per replica to aim at")
    max_ongoing_requests: int = option(
        32, help="requests one replica holds at once (running or in its queue); more wait in Ray's router, and a "
                "later turn whose replica is full goes to the least loaded one")
    num_cpus_per_replica: float = option(
        1.0, help="Ray CPUs each replica reserves; also its onnxruntime/torch threads unless --cpu_thread is given")
    npus_per_replica: int = option(
        0, help="Ascend NPUs each replica reserves (Ray resource NPU; give 1 with --session_type acl): Ray makes "
                "the NPU it assigns the replica's device 0")
    pin_cores: bool = option(
        False, help="pin each replica's process to one core, the replica's rank on its node (a CPU host that "
                    "runs one replica per core)")

    def __post_init__(self) -> None:
        if self.replicas is not None and (self.min_replicas is not None or self.max_replicas is not None):
            raise UserError("--replicas: give either a fixed count or --min_replicas/--max_replicas, not both")
        low = 1 if self.min_replicas is None else self.min_replicas
        for name, value in (("replicas", self.replicas), ("max_replicas", self.max_replicas)):
            if value is not None and value < 1:
                raise UserError(f"--{name} {value}: must be at least 1")
        if self.min_replicas is not None and self.min_replicas < 0:
            raise UserError(f"--min_replicas {self.min_replicas}: must not be negative")
        if self.max_replicas is not None and self.max_replicas < low:
            raise UserError(f"--max_replicas {self.max_replicas}: must be at least --min_replicas ({low})")
        if self.min_replicas is not None and self.max_replicas is None:
            raise UserError("--min_replicas needs --max_replicas")
        if self.target_ongoing_requests <= 0 or self.num_cpus_per_replica < 0 or self.npus_per_replica < 0:
            raise UserError("--target_ongoing_requests must be positive, --num_cpus_per_replica and "
                            "--npus_per_replica not negative")
        if self.max_ongoing_requests < 1:
            raise UserError(f"--max_ongoing_requests {self.max_ongoing_requests}: must be at least 1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    add_model_args(p)
    add_flags(p, ServerOptions, "server")
    add_flags(p, RayOptions, "ray serve")
    return p.parse_args(argv)


def scaling(ray_options: RayOptions) -> dict:
    """The replica deployment's count: fixed, or Ray Serve's autoscaling on requests in flight."""
    if ray_options.max_replicas is None:
        return {"num_replicas": ray_options.replicas or 1}
    low = 1 if ray_options.min_replicas is None else ray_options.min_replicas
    return {"autoscaling_config": {"min_replicas": low, "initial_replicas": max(low, 1),
                                   "max_replicas": ray_options.max_replicas,
                                   "target_ongoing_requests": ray_options.target_ongoing_requests}}


def build_app(args: argparse.Namespace):  # -> ray.serve.Application (Ray is imported here, not at the top)
    """The Serve application: one Ingress in front of the ModelReplica deployment."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from deploy.ingress import Ingress
    from deploy.replica import ModelReplica
    from deploy.router import ConversationRouter

    ray_options, server = from_args(RayOptions, args), from_args(ServerOptions, args)
    replica_args = argparse.Namespace(**vars(args))
    if replica_args.cpu_thread is None and ray_options.npus_per_replica == 0:
        replica_args.cpu_thread = max(1, int(ray_options.num_cpus_per_replica))
    actor = {"num_cpus": ray_options.num_cpus_per_replica}
    if ray_options.npus_per_replica:
        actor["resources"] = {"NPU": ray_options.npus_per_replica}
    router = RequestRouterConfig(request_router_class=ConversationRouter)
    replicas = serve.deployment(ModelReplica, name="ModelReplica", ray_actor_options=actor,
                                max_ongoing_requests=ray_options.max_ongoing_requests,
                                request_router_config=router, **scaling(ray_options))
    # One ingress: the conversation table lives in its handle's router. It only relays bytes.
    ingress = serve.deployment(Ingress, name="Ingress", num_replicas=1, ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=4096)
    return ingress.bind(replicas.bind(replica_args, ray_options.pin_cores),
                        int(server.max_request_mb * (1 << 20)))


def deploy(args: argparse.Namespace) -> None:
    """Start Serve's HTTP proxy on --host/--port and run the application on the Ray this process joined."""
    from ray import serve

    server = from_args(ServerOptions, args)
    serve.start(http_options={"host": server.host, "port": server.port})
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")


def serve_forever(args: argparse.Namespace) -> int:
    ray_options, server = from_args(RayOptions, args), from_args(ServerOptions, args)
    InferenceConfig.from_args(args)  # a wrong flag or path fails here, in one line, before Ray starts
    import ray
    from ray import serve

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # "local": a new Ray for this run, even where `ray start` left a cluster that a bare init would join.
    ray.init(address=ray_options.address or "local")
    try:
        deploy(args)
        print(f"ray_serve.py: serving on http://{server.host}:{server.port} (Ctrl-C stops)", flush=True)
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("ray_serve.py", lambda: serve_forever(args))


if __name__ == "__main__":
    sys.exit(main())
