"""ConversationRouter: Ray Serve's request router for the model replicas, with conversation affinity.

Ray Serve (2.60) lets a deployment replace how its handles pick a replica (RequestRouter, alpha API). The
ingress passes each request's conversation key (deploy/conversation.py) as the keyword `conversation`; the
router remembers which replica took a key's last turn and offers that replica alone for the next turn, so
the turn finds its KV cache there and prefills only the new messages. Only after HOME_TRIES offers (the
replica is full: max_ongoing_requests, or slow to tell its queue length) do the other replicas come in
as a second rank. A new conversation, or one whose replica is gone, goes to the least loaded replica:
Ray picks the lowest queue length within a rank.

Ray asks a replica for its queue length with a short deadline and skips one that answers late, so a rank
that names one replica is kept for several tries: re-choosing at once would, under load, favour whichever
replica answered last."""
from __future__ import annotations

from collections import OrderedDict

from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

HOME_TRIES = 4
MAX_PENDING = 10_000  # bookkeeping of requests being routed; a client that left early leaves an entry


class ConversationRouter(RequestRouter):
    def initialize_state(self, max_conversations: int = 100_000) -> None:
        self.max_conversations = max_conversations
        self.homes: OrderedDict[str, ReplicaID] = OrderedDict()  # conversation key -> its replica, oldest first
        self.tries: dict[str, int] = {}  # request -> times its conversation's replica was offered

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # Every rank was offered once: Ray backs off before asking again (else it loops without pause).
            pending_request.routing_context.should_backoff = True
        if not candidate_replicas:
            return []
        if pending_request is None:
            return [list(candidate_replicas)]
        request = pending_request.metadata.internal_request_id
        if len(self.tries) > MAX_PENDING:
            self.tries.clear()
        home = self.homes.get(_key(pending_request))
        ranked = [r for r in candidate_replicas if r.replica_id == home]
        if not ranked:
            return [list(candidate_replicas)]
        self.tries[request] = tries = self.tries.get(request, 0) + 1
        if tries <= HOME_TRIES:
            return [ranked]
        return [ranked, [r for r in candidate_replicas if r.replica_id != home]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        request = pending_request.metadata.internal_request_id
        self.tries.pop(request, None)
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


def _key(pending_request: PendingRequest) -> str | None:
    return pending_request.kwargs.get("conversation")
