"""Readable pure-PyTorch versions of every operator: the ground truth of the tests and the fallback
when the compiled extension is missing."""

from tokred.reference.ats import ATS_RULES, ats_sample
from tokred.reference.dpc_knn import dpc_knn
from tokred.reference.kmedoids import KMEDOIDS_RULES, kmedoids
from tokred.reference.sinkhorn import SINKHORN_MARGINALS, sinkhorn

__all__ = ["ATS_RULES", "KMEDOIDS_RULES", "SINKHORN_MARGINALS", "ats_sample", "dpc_knn", "kmedoids", "sinkhorn"]
