"""The manifests the ``mesh up`` gateway tests share: an echo Service in namespace shop with
one ready Pod, the default IngressClass, an Ingress for shop.example.com and the GatewayClass.
A format string (``echo_port``, ``echo_ip``); ``{pod}`` names the Pod."""

from __future__ import annotations

ECHO_SHOP = """\
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: shop}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: {echo_port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: shop, labels: {{app: echo}}}}
status: {{phase: Running, podIP: {echo_ip}}}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: mesh
  annotations: {{ingressclass.kubernetes.io/is-default-class: "true"}}
spec: {{controller: mesh.dev/ingress}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: shop, namespace: shop}}
spec:
  rules:
  - host: shop.example.com
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: echo, port: {{number: 80}}}}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: mesh}}
spec: {{controllerName: mesh.dev/gateway}}
---
"""
