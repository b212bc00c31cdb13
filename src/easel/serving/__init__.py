"""Ways to run the Easel server beyond one process: `ray` puts it on a Ray Serve cluster."""
