"""Where a stage runs, below everything that computes: who this worker is and how it reads the environment
(`environment`, `slurm`), the one distributed context (`distribute`: the split rule, chief-only writing, the
strategy and collectives), and the guards that only describe a run (`watchdog`, `devices`).
"""
