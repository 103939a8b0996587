"""Search: query building, the pipeline (first stage -> stages -> hits) and the stages."""
