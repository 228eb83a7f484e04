"""`jailkit export` / `import`: a built jail as an OCI image, an OCI runtime bundle, a Kubernetes
Pod, or a jailkit archive. One module per format; source.py reads the jail they all start from."""
