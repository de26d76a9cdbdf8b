"""The emulator tests' fixtures (kube_cluster, module_kube_cluster, kube_cluster_auth, kubectl_path)
come from the edgemodel-dev pytest plugin (entry point pytest11): nothing to import here."""
