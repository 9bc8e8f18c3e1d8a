"""Providers: search Calls -> requests on a tier -> CallResults.

capabilities.py (text, vision, image), sync_tiers.py (standard, flex), batch via batching.lifecycle,
tier_policy.py (which tier, fallback), executor.py (a round); `runtime.py` builds them from Settings.
"""
