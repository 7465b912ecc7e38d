"""ConversationRouter: Ray Serve's request router for the model replicas, with conversation affinity.

Ray Serve (2.60) lets a deployment replace how its handles pick a replica (RequestRouter, alpha API). The
ingress passes each request's conversation key (deploy/conversation.py) as the keyword `conversation`; the
router remembers which replica took a key's first turn and ranks that replica first for every later turn,
so the turn finds its KV cache there and prefills only the new messages. A new conversation, or one whose
replica is gone or full (max_ongoing_requests), goes to the least loaded replica: Ray picks the lowest
queue length within a rank, and every other replica is the second rank.

policy "random" (for bench/ray_load.py) ignores the key: one random replica first, the rest after."""
from __future__ import annotations

import random
from collections import OrderedDict

from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

POLICIES = ("affinity", "random")


class ConversationRouter(RequestRouter):
    def initialize_state(self, policy: str = "affinity", max_conversations: int = 100_000) -> None:
        if policy not in POLICIES:
            raise ValueError(f"routing policy {policy!r}: one of {POLICIES}")
        self.policy = policy
        self.max_conversations = max_conversations
        self.homes: OrderedDict[str, ReplicaID] = OrderedDict()  # conversation key -> its replica, oldest first

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # Every rank was offered once: Ray backs off before asking again (else it loops without pause).
            pending_request.routing_context.should_backoff = True
        if not candidate_replicas:
            return []
        if self.policy == "random":
            first = random.choice(candidate_replicas)
            return [[first], [r for r in candidate_replicas if r is not first]]
        home = self.homes.get(_key(pending_request))
        ranked = [r for r in candidate_replicas if r.replica_id == home]
        if not ranked:
            return [list(candidate_replicas)]
        return [ranked, [r for r in candidate_replicas if r.replica_id != home]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        key = _key(pending_request)
        if key is None:
            return
        self.homes[key] = replica_id
        self.homes.move_to_end(key)
        while len(self.homes) > self.max_conversations:
            self.homes.popitem(last=False)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        for key in [k for k, r in self.homes.items() if r == replica_id]:
            del self.homes[key]


def _key(pending_request: PendingRequest | None) -> str | None:
    return pending_request.kwargs.get("conversation") if pending_request is not None else None
