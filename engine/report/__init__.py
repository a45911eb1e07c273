"""Reports of event logs: :mod:`engine.report.extract` reads a log once into plain
data; :mod:`engine.report.plots` draws that data onto matplotlib Axes (imported only
when plotting, extra ``[plot]``); :mod:`engine.report.html` writes the HTML page."""
