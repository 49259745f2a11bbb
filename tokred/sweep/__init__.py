"""Which token-reduction method for a latency budget: `python -m tokred.sweep --out DIR` (run from the repository
root; it uses train/ and analysis/).

Every (method, keep rate) on one backbone, off the shelf: parameter-free methods on the backbone's weights,
learned ones from checkpoints of train/main.py, and the unreduced model; for each, the accuracy (top-1, or mAP on
multi-label datasets), images/s at --batch, latency at batch 1 and the mean tokens per stage. Writes DIR/sweep.csv
row by row (a rerun with the same settings skips the finished rows), DIR/pareto.png and .pdf, DIR/index.html.
"""
