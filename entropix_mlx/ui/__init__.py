"""Everything that draws: rich, plotext and prompt_toolkit are imported here and nowhere else."""
