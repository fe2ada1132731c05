"""`agentflow ui`: a local page over the run database (a list of runs, each run's graph
coloured by status and updating live, each node's details). `reads` turns the database into
JSON, `picture` draws a run's graph as SVG, `app` serves both and the static page."""
