# Loads a Vagrantfile without Vagrant: every call on the config is recorded and printed as
# JSON ({"path": "vm.define.node-1.vm.hostname=", "args": [...], "kw": {...}}).
require "json"

class Recorder
  def initialize(log, path)
    @log = log
    @path = path
  end

  def method_missing(name, *args, **kw, &blk)
    path = @path + [name.to_s]
    @log << { "path" => path.join("."), "args" => args, "kw" => kw }
    blk.call(Recorder.new(@log, path + args.first(1).map(&:to_s))) if blk
    Recorder.new(@log, path)
  end

  def respond_to_missing?(*)
    true
  end
end

LOG = []
module Vagrant
  def self.configure(_version)
    yield Recorder.new(LOG, [])
  end
end

load ARGV.fetch(0)
puts JSON.generate(LOG)
