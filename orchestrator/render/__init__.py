"""Pure renderers: results in, documents out (SVG, Kubernetes, Helm values, dashboards). No I/O."""
