"""Side-by-side harness against the official PyTorch DREAM (issue 17).

Our own code only: `shims` (CPU stand-ins installed before the official files are imported),
`shapes` (the official constructor arguments at the anchor shapes), `worker` (the subprocess
that builds the official model from --official=PATH and times it on request) and `timing`
(the alternating schedule and the summary). The official files are never in this repository.
"""
