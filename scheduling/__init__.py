"""The job system: the durable fair queue, the scheduler and the workers that run jobs."""
