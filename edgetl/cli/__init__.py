"""The two command-line shells over the library: `edgetl` (host.py) and `edgetl-device`
(device.py, torch-free). Library code never imports this package."""
