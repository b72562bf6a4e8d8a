"""Find what is wrong in the labels of an image dataset: label issues, near-duplicates across splits, outliers."""

from tlkit.audit.pipeline import AuditResult, AuditSettings, audit

__all__ = ["AuditResult", "AuditSettings", "audit"]
