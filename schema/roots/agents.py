from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry

from resolvers import agents as resolve
from resolvers import trading
from schema import agents as types
from schema.context import Info
from schema.trading import EmergencyResult


@strawberry.type
class AgentsQuery:
    agents: types.AgentConnection = strawberry.field(resolver=resolve.agents_query)
    agent: types.Agent | None = strawberry.field(resolver=resolve.agent)
    notifications: types.NotificationConnection = strawberry.field(resolver=resolve.notifications)


@strawberry.type
class AgentsMutation:
    create_agent: types.AgentResult = strawberry.mutation(resolver=resolve.create_agent)
    update_agent: types.AgentResult = strawberry.mutation(resolver=resolve.update_agent)
    delete_agent: bool = strawberry.mutation(
        resolver=resolve.delete_agent,
        description="Retire an agent: its triggers are removed and its open orders canceled; "
        "its executions, orders and positions stay. False when there is no such agent.",
    )
    activate_agent: types.AgentResult = strawberry.mutation(resolver=resolve.activate_agent)
    pause_agent: types.AgentResult = strawberry.mutation(resolver=resolve.pause_agent)
    pause_all_agents: EmergencyResult = strawberry.mutation(
        resolver=trading.pause_all_agents,
        description="Pause every agent of this user; runs already queued place nothing.",
    )
    run_agent: types.RunAgentResult = strawberry.mutation(
        resolver=resolve.run_agent,
        description="Queue a run now; follow it on the agentExecutions subscription.",
    )
    add_trigger: types.AgentResult = strawberry.mutation(resolver=resolve.add_trigger)
    remove_trigger: bool = strawberry.mutation(resolver=resolve.remove_trigger)
    mark_notifications_read: int = strawberry.mutation(
        resolver=resolve.mark_notifications_read,
        description="Mark these notifications (all unread when ids is absent) read; how many.",
    )


@strawberry.type
class AgentsSubscription:
    @strawberry.subscription(description="This user's agent runs, as they progress.")  # type: ignore[untyped-decorator]
    async def agent_executions(
        self, info: Info, agent_id: strawberry.ID | None = None
    ) -> AsyncGenerator[types.AgentExecution, None]:
        async for execution in resolve.agent_executions(info, agent_id):
            yield execution

    @strawberry.subscription(description="This user's notifications, as they are created.")  # type: ignore[untyped-decorator]
    async def notifications(self, info: Info) -> AsyncGenerator[types.Notification, None]:
        async for notification in resolve.notification_events(info):
            yield notification
