def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes tens of seconds on purpose (deselect with -m 'not slow')")
