"""``crashonly chaos``: kill the user's processes under load and prove nothing was lost.

The folder is the architecture:

* :mod:`.probe`: the probe task added to the user's app, and its ledger table.
* :mod:`.supervised`: the user's formation under ``crashonly up``, and what its output says.
* :mod:`.faults`: the killer (signals, pidfd watches, escalation) and database restarts.
* :mod:`.load`: jobs at a steady pace, HTTP requests, queue samples.
* :mod:`.record`: what the run observed, on one time axis.
* :mod:`.verify`: the invariants.
* :mod:`.display`, :mod:`.report`: the live line, the summary, the HTML report.
* :mod:`.cli`: ``crashonly chaos`` and ``crashonly demo``.

Standard library only. See docs/chaos.md.
"""
