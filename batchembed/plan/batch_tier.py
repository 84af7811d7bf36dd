"""What ``plan`` says about the batch tier: the provider's batch price, its completion window and how many
batches the job's inputs make, beside the online figures (where the provider sells a batch tier)."""

from __future__ import annotations

from batchembed.job.resolved import ResolvedJob
from batchembed.plan.report import PlanReport
from batchembed.run.batch.shapes import SHAPES, window_text


def batch_estimate(report: PlanReport, resolved: ResolvedJob) -> None:
    """The batch tier's price and batch count next to the online figures, where the provider sells one."""
    config = resolved.config
    report.tier = config.model.tier
    shape = SHAPES.get(resolved.model.provider)
    if shape is None or (config.is_rerank and resolved.model.provider != "voyage"):
        return
    report.batch_price_share = shape.discount
    report.batch_window = window_text(shape.window)
    cap = min(shape.max_inputs, config.model.batch_inputs or shape.max_inputs)
    inputs = report.pairs_to_score if config.is_rerank else report.unique_texts
    report.batches = -(-inputs // cap)
    if report.estimated_cost_usd is not None:
        report.estimated_batch_cost_usd = report.estimated_cost_usd * shape.discount
