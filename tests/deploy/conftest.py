import pytest
from deploy_helpers import OVERLAYS, render_overlay


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Every overlay rendered once per test run: overlay name -> its Kubernetes objects."""
    return {overlay: render_overlay(overlay) for overlay in OVERLAYS}
