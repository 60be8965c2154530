import ArgumentParser

@main
struct ShardBank: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shardbank",
        abstract: "A bank's account ledger on range-sharded MariaDB/MySQL nodes, with metadata in etcd.",
        discussion: """
            Start a local cluster of real processes with `shardbank demo up --dir DIR`, then inspect it \
            with `shardbank ctl status --config DIR/shardbank.json`. Configuration is one JSON file \
            (see config/shardbank.example.json); every field can be overridden by an environment \
            variable SHARDBANK_<FIELD_PATH>, e.g. SHARDBANK_ETCD_ENDPOINTS.
            """,
        subcommands: [Serve.self, AgentCommand.self, Ctl.self, Demo.self, Bench.self]
    )
}
