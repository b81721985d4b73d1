"""The Enhanced World Model agent (seed 004): VQ-VAE vision, temporal-transformer memory,
planning controllers, trained with A2C and GAE on vectorised gymnasium environments.

Run it as ``python -m flatrl.agents.world_model --env-name CartPole-v1 --use-improved-controller
--use-a2c``. One epoch is one rollout of ``n_steps x n_envs`` env steps followed by one pass over
it in ``--num-minibatches`` gradient steps (see ``config.py``).
"""
