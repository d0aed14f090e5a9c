"""The query planner: SQL text in, a ``Plan`` (source fragments plus a residual query) out."""

from gateway.planner.bind import BoundPlan, bind
from gateway.planner.context import PlanContext
from gateway.planner.optimizer import RULES, plan_statement
from gateway.planner.parse_statement import Statement, parse_statement
from gateway.planner.plan import Plan

__all__ = ["RULES", "BoundPlan", "Plan", "PlanContext", "Statement", "bind", "parse_statement", "plan_statement"]
