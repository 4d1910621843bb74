# A small HTTP server on an Apple container, registered in Consul under the address
# that every Mac on the tailnet can reach.
#
# The driver publishes the container's port 8080 on this Mac's Tailscale address at the
# port Nomad allocates for "http", and returns that address and port as the task's
# driver network. The service and its check use address_mode = "driver", so Consul
# gets the Tailscale address instead of the container's private vmnet address.
#
#   nomad job run jobs/examples/hello.nomad.hcl
#   curl http://hello.service.consul:<port>/    (the port is in `nomad alloc status`)

job "hello" {
  type = "service"

  group "hello" {
    count = 1

    network {
      port "http" {
        to = 8080
      }
    }

    task "server" {
      driver = "apple-container"

      config {
        image = "docker.io/hashicorp/http-echo:1.0"
        args  = ["-listen=:8080", "-text=hello from an Apple container"]
        ports = ["http"]
      }

      resources {
        cpu    = 500
        memory = 256
      }

      kill_timeout = "10s"

      service {
        name         = "hello"
        port         = "http"
        provider     = "consul"
        address_mode = "driver"

        check {
          type         = "http"
          path         = "/"
          interval     = "10s"
          timeout      = "2s"
          address_mode = "driver"
        }
      }
    }
  }
}
