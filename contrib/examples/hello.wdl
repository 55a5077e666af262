version 1.2

# A small scatter that exercises File, Array[File] and Directory inputs and outputs.
# Run it with the podman_rootless backend, e.g.:
#   MINIWDL__SCHEDULER__CONTAINER_BACKEND=podman_rootless \
#     miniwdl run contrib/examples/hello.wdl who=Alice who=Bob
workflow hello {
    input {
        Array[String] who
        String image = "localhost/miniwdl-podman/busybox-bash:2"
    }
    scatter (name in who) {
        call greet { input: name = name, image = image }
    }
    call gather { input: greetings = greet.greeting, image = image }
    output {
        Array[File] greetings = greet.greeting
        File all = gather.all
        Directory dir = gather.dir
    }
}

task greet {
    input {
        String name
        String image
    }
    command <<<
        set -euo pipefail
        echo "Hello, ~{name}! (uid $(id -u) in the container)" > "~{name}.txt"
    >>>
    output {
        File greeting = "~{name}.txt"
    }
    runtime {
        container: image
    }
}

task gather {
    input {
        Array[File] greetings
        String image
    }
    command <<<
        set -euo pipefail
        mkdir -p out
        cat ~{sep=" " greetings} | tee all.txt
        cp ~{sep=" " greetings} out/
    >>>
    output {
        File all = "all.txt"
        Directory dir = "out"
    }
    runtime {
        container: image
    }
}
