"""What a library keeps: the catalog and its migrations, the vectors of each embedding
space and their saved snapshots, and the stores search stages read from."""
